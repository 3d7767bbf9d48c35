"""Unit tests for scripts/check_architecture.py: it fails on a planted cycle, a protocol type in a domain
module, an import out of src/preprocess and an oversized file, naming each; it passes on a clean tree and
on the repository's own src/. Standard library only.

    python3 -m unittest discover -s scripts/tests
"""

import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.dirname(HERE)
REPO = os.path.dirname(SCRIPTS)
CHECK = os.path.join(SCRIPTS, "check_architecture.py")
sys.path.insert(0, SCRIPTS)

import check_architecture as ca  # noqa: E402

# A small crate shaped like ours: a door, two domain modules, the wiring. Clean as written.
CLEAN = {
    "src/lib.rs": """
        //! Layers: grpc -> embed -> common. tonic:: in a comment is not a use.
        pub mod common;
        pub mod embed;
        pub mod grpc;
        pub mod preprocess;
        pub mod server;
    """,
    "src/common.rs": """
        pub struct Error;
    """,
    "src/embed/mod.rs": """
        //! Mentions crate::grpc and axum::Router only in prose.
        use crate::common::Error;
        mod tower; // a local module that shares a protocol crate's name
        pub use tower::Tower;
        pub fn embed() -> Result<(), Error> { let _ = "crate::grpc::x and tonic::Status"; Ok(()) }

        #[cfg(test)]
        mod tests {
            use crate::grpc::Service;
            fn t() { let _ = tonic::Status::ok(""); }
        }
    """,
    "src/embed/tower.rs": """
        pub struct Tower;
    """,
    "src/grpc/mod.rs": """
        use crate::{common::Error, embed::{self, Tower}};
        pub struct Service;
        pub fn status(_: Error) -> tonic::Status { tonic::Status::ok("") }
    """,
    "src/preprocess/mod.rs": """
        pub fn decode(b: &[u8]) -> usize { b.len() }
    """,
    "src/server.rs": """
        use crate::grpc::Service;
        pub fn serve() -> axum::Router { axum::Router::new() }
    """,
}


def write_tree(root, files):
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text).lstrip())


def run(root):
    p = subprocess.run([sys.executable, CHECK, root], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


class PlantedTree(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def check(self, **changes):
        files = dict(CLEAN)
        files.update({k.replace("__", "/").replace("_rs", ".rs"): v for k, v in changes.items()})
        write_tree(self.root, files)
        return run(self.root)

    def test_clean_tree_passes(self):
        rc, out = self.check()
        self.assertEqual(rc, 0, out)
        self.assertIn("architecture: ok", out)
        self.assertIn("0 cycles", out)

    def test_planted_cycle_fails_naming_both_modules_and_the_files(self):
        # common -> embed closes the loop embed -> common.
        rc, out = self.check(src__common_rs="""
            use crate::embed::embed;
            pub struct Error;
        """)
        self.assertEqual(rc, 1, out)
        self.assertIn("cycle between common, embed", out)
        self.assertIn("common -> embed (src/common.rs)", out)
        self.assertIn("embed -> common (src/embed/mod.rs)", out)

    def test_longer_cycle_through_a_door_fails(self):
        # embed -> grpc -> embed, through a grouped import in a nested file.
        rc, out = self.check(src__embed__tower_rs="""
            use crate::{common, grpc::Service};
            pub struct Tower;
        """)
        self.assertEqual(rc, 1, out)
        self.assertIn("cycle between embed, grpc", out)
        self.assertIn("embed -> grpc (src/embed/tower.rs)", out)

    def test_protocol_type_in_a_domain_module_fails_naming_file_and_crate(self):
        rc, out = self.check(src__embed__tower_rs="""
            pub struct Tower;
            pub fn status() -> tonic::Status { tonic::Status::ok("") }
        """)
        self.assertEqual(rc, 1, out)
        self.assertIn("protocol crate `tonic` outside src/grpc/ and src/http/: src/embed/tower.rs", out)

    def test_protocol_import_in_a_domain_module_fails(self):
        rc, out = self.check(src__common_rs="""
            use hyper::{body::Incoming, Request};
            pub struct Error;
        """)
        self.assertEqual(rc, 1, out)
        self.assertIn("protocol crate `hyper` outside src/grpc/ and src/http/: src/common.rs", out)

    def test_import_out_of_preprocess_fails(self):
        rc, out = self.check(src__preprocess__mod_rs="""
            use crate::common::Error;
            pub fn decode(b: &[u8]) -> Result<usize, Error> { Ok(b.len()) }
        """)
        self.assertEqual(rc, 1, out)
        self.assertIn("src/preprocess imports crate::common", out)

    def test_oversized_file_fails_and_generated_tables_do_not(self):
        body = "".join(f"pub const C{i}: u32 = {i};\n" for i in range(ca.MAX_LINES + 1))
        rc, out = self.check(src__preprocess__tables_big_rs=body)
        self.assertEqual(rc, 0, out)
        rc, out = self.check(src__preprocess__big_rs=body)
        self.assertEqual(rc, 1, out)
        self.assertIn(f"file over {ca.MAX_LINES} lines of code: src/preprocess/big.rs", out)


class Lexing(unittest.TestCase):
    def test_comments_and_literals_are_blanked_and_lines_kept(self):
        text = 'let a = "tonic::x"; // axum::y\n/* hyper::z /* nested */ */ let c = \'"\'; r#"prost::"#;\n'
        code = ca.blank_comments_and_literals(text)
        self.assertEqual(code.count("\n"), text.count("\n"))
        for name in ("tonic", "axum", "hyper", "prost", "nested"):
            self.assertNotIn(name, code)
        self.assertIn("let c", code)

    def test_test_items_are_removed(self):
        code = "fn a() {}\n#[cfg(test)]\nmod tests {\n fn b() { {} }\n}\n#[cfg(test)]\nuse x::y;\nfn c() {}\n"
        kept = ca.strip_test_items(code)
        self.assertIn("fn a", kept)
        self.assertIn("fn c", kept)
        self.assertNotIn("fn b", kept)
        self.assertNotIn("x::y", kept)

    def test_use_trees_expand(self):
        self.assertEqual(
            sorted(ca.use_paths("crate::{a::{b, c as d}, e}, ::f::g")),
            ["crate::a::b", "crate::a::c", "crate::e", "f::g"],
        )


class RealTree(unittest.TestCase):
    def test_the_repository_passes(self):
        rc, out = run(REPO)
        self.assertEqual(rc, 0, out)
        self.assertIn("architecture: ok", out)


if __name__ == "__main__":
    unittest.main()
