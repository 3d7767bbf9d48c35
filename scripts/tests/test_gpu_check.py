"""Unit tests for scripts/gpu_check.py, gpu_check.sh, gpu_bundle.sh (its --check mode) and model_skeleton.py: the
CPU-side parts (arguments, the JSON result file and its summary, stage time limits, parity arithmetic, library
discovery, wheel selection, the sweep plan, the bundle's size and checksum checks). Standard library only: no GPU,
no torch, no numpy (the model skeleton test runs only where .cache/export-venv has onnx, onnxruntime and torch).

    python3 -m unittest discover -s scripts/tests
"""

import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.dirname(HERE)
sys.path.insert(0, SCRIPTS)

import gpu_check as gc  # noqa: E402


class Tmp(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = self._tmp.name
        self.out = os.path.join(self.dir, "sub", "gpu_check.json")

    def tearDown(self):
        self._tmp.cleanup()

    def doc(self):
        with open(self.out) as f:
            return json.load(f)


class ResultFile(Tmp):
    def test_init_left_and_finish(self):
        self.assertEqual(gc.main(["init", "--out", self.out, "--budget", "420", "--meta", "k=v"]), 0)
        d = self.doc()
        self.assertEqual(d["schema"], gc.SCHEMA_VERSION)
        self.assertEqual(d["budget_s"], 420)
        self.assertEqual(d["machine"]["k"], "v")
        self.assertEqual(d["stages"], {})
        self.assertGreater(gc.budget_left(d), 400)
        gc.main(["record", "--out", self.out, "--name", "a", "--rc", "0"])
        gc.main(["record", "--out", self.out, "--name", "b", "--rc", "3", "--note", "broke"])
        gc.main(["record", "--out", self.out, "--name", "c", "--status", "skipped"])
        gc.main(["finish", "--out", self.out])
        d = self.doc()
        self.assertEqual(d["stages"]["a"]["status"], "ok")
        self.assertEqual(d["stages"]["b"]["status"], "failed")
        self.assertEqual(d["stages"]["b"]["note"], "broke")
        s = d["summary"]
        self.assertEqual(s["stages"]["ok"], ["a"])
        self.assertEqual(s["stages"]["failed"], ["b"])
        self.assertEqual(s["stages"]["skipped"], ["c"])
        self.assertFalse(s["all_ok"])
        self.assertIn("finished", d)

    def test_budget_arithmetic(self):
        d = gc.init_doc(420, start=1000.0)
        self.assertAlmostEqual(gc.budget_left(d, now=1100.0), 320.0)
        self.assertEqual(gc.budget_left(d, now=2000.0), 0.0)
        self.assertEqual(gc.stage_limit(300, 320, 10), 300)
        self.assertEqual(gc.stage_limit(300, 100, 10), 90)
        self.assertEqual(gc.stage_limit(300, 5, 10), 0)

    def test_status_of(self):
        self.assertEqual(gc.status_of(0), "ok")
        self.assertEqual(gc.status_of(1), "failed")
        self.assertEqual(gc.status_of(124), "timeout")
        self.assertEqual(gc.status_of(137), "timeout")
        self.assertEqual(gc.status_of(125), "skipped")
        self.assertEqual(gc.status_of(None), "skipped")

    def test_set_path_creates_and_merges(self):
        d = {}
        gc.set_path(d, "results.parity.cuda", {"a": 1})
        gc.set_path(d, "results.parity.cuda", {"b": 2})
        gc.set_path(d, "results.parity.trt", 3)
        self.assertEqual(d, {"results": {"parity": {"cuda": {"a": 1, "b": 2}, "trt": 3}}})
        gc.set_path(d, "results.parity", "replaced-by-non-dict")
        self.assertEqual(d["results"]["parity"], "replaced-by-non-dict")
        with self.assertRaises(ValueError):
            gc.set_path(d, "", 1)

    def test_merge_file_and_value(self):
        gc.main(["init", "--out", self.out])
        src = os.path.join(self.dir, "x.json")
        with open(src, "w") as f:
            json.dump({"items_per_s": 12.5}, f)
        gc.main(["merge", "--out", self.out, "--key", "throughput.cuda.b1", "--file", src])
        gc.main(["merge", "--out", self.out, "--key", "note", "--value", "plain text"])
        gc.main(["merge", "--out", self.out, "--key", "n", "--value", "[1, 2]"])
        r = self.doc()["results"]
        self.assertEqual(r["throughput"]["cuda"]["b1"]["items_per_s"], 12.5)
        self.assertEqual(r["note"], "plain text")
        self.assertEqual(r["n"], [1, 2])

    def test_nan_becomes_null(self):
        gc.main(["init", "--out", self.out])
        gc.update(self.out, lambda d: gc.set_path(d, "results.x", {"v": float("nan"), "w": [float("inf"), 1.0]}))
        self.assertEqual(self.doc()["results"]["x"], {"v": None, "w": [None, 1.0]})

    def test_parallel_updates_are_not_lost(self):
        gc.main(["init", "--out", self.out])

        def work(i):
            for j in range(10):
                gc.update(self.out, lambda d, i=i, j=j: gc.set_path(d, f"results.t{i}.k{j}", j))

        ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        r = self.doc()["results"]
        self.assertEqual(sorted(r), ["t0", "t1", "t2", "t3"])
        self.assertTrue(all(len(v) == 10 for v in r.values()))


class Stages(Tmp):
    def test_run_ok_records_log(self):
        gc.main(["init", "--out", self.out])
        log = os.path.join(self.dir, "ok.log")
        rc = gc.main(["run", "--out", self.out, "--name", "hello", "--cap", "30", "--log", log, "--",
                      sys.executable, "-c", "print('hello from the stage')"])
        self.assertEqual(rc, 0)
        st = self.doc()["stages"]["hello"]
        self.assertEqual(st["status"], "ok")
        self.assertIn("hello from the stage", st["log_tail"])
        with open(log) as f:
            self.assertIn("hello from the stage", f.read())

    def test_run_failure_is_recorded_not_raised(self):
        gc.main(["init", "--out", self.out])
        rc = gc.main(["run", "--out", self.out, "--name", "bad", "--cap", "30", "--",
                      sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
        self.assertEqual(rc, 3)
        st = self.doc()["stages"]["bad"]
        self.assertEqual((st["status"], st["rc"]), ("failed", 3))
        self.assertIn("boom", st["log_tail"])

    def test_run_missing_program_is_a_failure(self):
        gc.main(["init", "--out", self.out])
        with self.assertRaises(FileNotFoundError):
            gc.run_limited(["/nonexistent/program"], 5)

    def test_run_timeout_kills_the_process_group(self):
        gc.main(["init", "--out", self.out])
        marker = os.path.join(self.dir, "child-alive")
        # The child spawns a grandchild that would write the marker after 3 s: both must die at the limit.
        grandchild = f"import time; time.sleep(3); open({marker!r}, 'w').close()"
        code = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(30)"
        t0 = time.time()
        rc = gc.main(["run", "--out", self.out, "--name", "slow", "--cap", "1", "--reserve", "0",
                      "--min-seconds", "0.5", "--", sys.executable, "-c", code])
        self.assertEqual(rc, gc.EXIT_TIMEOUT)
        self.assertLess(time.time() - t0, 10)
        self.assertEqual(self.doc()["stages"]["slow"]["status"], "timeout")
        time.sleep(3.5)
        self.assertFalse(os.path.exists(marker), "a grandchild outlived the stage's limit")

    def test_run_skipped_without_budget(self):
        gc.main(["init", "--out", self.out, "--budget", "3"])
        rc = gc.main(["run", "--out", self.out, "--name", "late", "--cap", "60", "--",
                      sys.executable, "-c", "print(1)"])
        self.assertEqual(rc, gc.EXIT_SKIPPED)
        st = self.doc()["stages"]["late"]
        self.assertEqual(st["status"], "skipped")
        self.assertIn("budget", st["note"])

    def test_left_prints_seconds(self):
        gc.main(["init", "--out", self.out, "--budget", "100"])
        p = subprocess.run([sys.executable, os.path.join(SCRIPTS, "gpu_check.py"), "left", "--out", self.out],
                           capture_output=True, text=True, check=True)
        self.assertTrue(90 <= int(p.stdout.strip()) <= 100, p.stdout)

    def test_bad_arguments(self):
        with self.assertRaises(SystemExit) as cm:
            gc.main(["nope"])
        self.assertEqual(cm.exception.code, 2)
        with self.assertRaises(SystemExit):
            gc.main(["run", "--out", self.out, "--name", "x"])  # --cap missing
        with self.assertRaises(SystemExit):
            gc.main(["run", "--out", self.out, "--name", "x", "--cap", "5"])  # no command

    def test_shell_script_parses_and_rejects_unknown_flags(self):
        sh = os.path.join(SCRIPTS, "gpu_check.sh")
        subprocess.run(["bash", "-n", sh], check=True)
        p = subprocess.run(["bash", sh, "--no-such-flag"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 2)
        self.assertIn("unknown argument", p.stderr)
        p = subprocess.run(["bash", sh, "--help"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0)
        self.assertIn("gpu_check.json", p.stdout)
        p = subprocess.run(["bash", sh, "--dry-run"], capture_output=True, text=True)  # the repository: no bundle
        self.assertEqual(p.returncode, 2)
        self.assertIn("unpacked bundle", p.stderr)


class Parity(unittest.TestCase):
    def test_cosine(self):
        self.assertAlmostEqual(gc.cosine([1, 0], [2, 0]), 1.0)
        self.assertAlmostEqual(gc.cosine([1, 0], [0, 3]), 0.0)
        self.assertAlmostEqual(gc.cosine([1, 1], [1, 0]), 1 / math.sqrt(2))
        self.assertTrue(math.isnan(gc.cosine([0, 0], [1, 0])))
        with self.assertRaises(ValueError):
            gc.cosine([1], [1, 2])

    def test_parity_pass_and_fail(self):
        ref = {"images": {"a.jpg": [1.0, 0.0, 0.0], "b.png": [0.0, 1.0, 0.0]}, "texts": {"cat": [0.0, 0.0, 1.0]}}
        got = {"images": {"a.jpg": [0.999, 0.01, 0.0], "b.png": [0.0, 2.0, 0.0]}, "texts": {"cat": [0.0, 0.0, 1.0]}}
        r = gc.parity(ref, got, 0.999)
        self.assertTrue(r["pass"], r)
        self.assertEqual(r["modalities"]["images"]["n"], 2)
        self.assertAlmostEqual(r["modalities"]["texts"]["min"], 1.0)
        self.assertEqual(r["modalities"]["images"]["worst"][0]["item"], "a.jpg")
        got["images"]["a.jpg"] = [0.5, 0.5, 0.0]
        r = gc.parity(ref, got, 0.999)
        self.assertFalse(r["pass"])
        self.assertFalse(r["modalities"]["images"]["pass"])
        self.assertTrue(r["modalities"]["texts"]["pass"])

    def test_parity_missing_items_fail(self):
        ref = {"images": {"a": [1.0]}, "texts": {"t": [1.0], "u": [1.0]}}
        got = {"images": {"a": [1.0]}, "texts": {"t": [1.0]}}
        r = gc.parity(ref, got, 0.9)
        self.assertFalse(r["pass"])
        self.assertEqual(r["modalities"]["texts"]["missing"], ["u"])
        r = gc.parity({"images": {}, "texts": {}}, {"images": {}, "texts": {}}, 0.9)
        self.assertFalse(r["pass"], "nothing compared must not pass")


class Plans(unittest.TestCase):
    def test_sweep_plan(self):
        p = gc.sweep_plan([1, 32, 256])
        self.assertEqual([x["max_batch_size"] for x in p], [1, 32, 256])
        self.assertEqual((p[0]["concurrency"], p[0]["items"]), (1, 1))
        for x in p[1:]:
            rows = x["concurrency"] * x["items"]
            self.assertGreaterEqual(rows, 2 * x["max_batch_size"])
            self.assertLessEqual(x["concurrency"], 64)
            self.assertGreaterEqual(x["max_items_per_request"], x["items"])
            self.assertGreaterEqual(x["max_concurrent_requests"], x["concurrency"])
            self.assertGreaterEqual(x["max_queue_rows"], rows)
        with self.assertRaises(ValueError):
            gc.sweep_plan([0])

    def test_seconds(self):
        self.assertEqual(gc._seconds("10s"), 10.0)
        self.assertEqual(gc._seconds("250ms"), 0.25)
        self.assertEqual(gc._seconds("2m"), 120.0)
        self.assertEqual(gc._seconds("7"), 7.0)

    def test_bench_summary_keeps_known_fields(self):
        r = gc.bench_summary({"items_per_s": 3.0, "latency_ms_p50": 1.0, "junk": 1, "errors": 0})
        self.assertEqual(r, {"items_per_s": 3.0, "latency_ms_p50": 1.0, "errors": 0})

    def test_server_cmd(self):
        import argparse

        a = argparse.Namespace(bin="clip-serve", model_dir="m", provider="cuda", intra_op_threads=None,
                               server_arg=["--x"], batch_delay="2ms")
        ports = {"grpc": 1234, "http": 1235, "probe": 1236}
        plan = gc.sweep_plan([256])[0]
        cmd = gc.server_cmd(a, ports, "/d", plan)
        self.assertEqual(cmd[:2], ["clip-serve", "serve"])
        for flag, value in (("--grpc-addr", "127.0.0.1:1234"), ("--http-addr", "127.0.0.1:1235"),
                            ("--probe-addr", "127.0.0.1:1236"), ("--provider", "cuda"),
                            ("--max-batch-size", "256"), ("--max-batch-delay", "2ms")):
            self.assertEqual(cmd[cmd.index(flag) + 1], value)
        self.assertEqual(cmd[-1], "--x")
        a.provider, a.intra_op_threads = "cpu", 16
        cmd = gc.server_cmd(a, ports, "/d", gc.sweep_plan([1])[0])
        self.assertNotIn("--max-batch-delay", cmd)
        self.assertEqual(cmd[cmd.index("--intra-op-threads") + 1], "16")
        cmd = gc.server_cmd(a, ports, "/d", None)
        self.assertNotIn("--max-batch-size", cmd)

    def test_bench_cmd(self):
        import argparse

        a = argparse.Namespace(bench_bin="clip-bench", duration="5s", bench_image=["/a.jpg", "/b.jpg"],
                               images="/none")
        cmd = gc.bench_cmd(a, 99, "images", 16, 8, "/o.json")
        self.assertEqual(cmd[cmd.index("--addr") + 1], "http://127.0.0.1:99")
        self.assertEqual(cmd[cmd.index("--image") + 1:], ["/a.jpg", "/b.jpg"])
        self.assertEqual(cmd[cmd.index("--concurrency") + 1], "16")
        self.assertNotIn("--image", gc.bench_cmd(a, 99, "texts", 1, 1, "/o.json"))


class Libraries(Tmp):
    def touch(self, *parts):
        p = os.path.join(self.dir, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "w").close()
        return p

    def test_find_gpu_libs(self):
        self.touch("onnxruntime", "capi", "libonnxruntime.so.1.32.0")
        self.touch("onnxruntime", "capi", "libonnxruntime_providers_cuda.so")
        self.touch("onnxruntime", "capi", "libonnxruntime_providers_tensorrt.so")
        self.touch("onnxruntime", "capi", "libonnxruntime_providers_shared.so")
        self.touch("nvidia", "cudnn", "lib", "libcudnn.so.9")
        self.touch("nvidia", "cublas", "lib", "libcublas.so.12")
        self.touch("tensorrt_libs", "libnvinfer.so.10")
        r = gc.find_gpu_libs(self.dir)
        self.assertTrue(r["ort_dylib"].endswith("libonnxruntime.so.1.32.0"))
        self.assertEqual(r["providers"], ["cuda", "shared", "tensorrt"])
        names = [os.path.relpath(d, self.dir) for d in r["lib_dirs"]]
        self.assertEqual(names, ["onnxruntime/capi", "nvidia/cublas/lib", "nvidia/cudnn/lib", "tensorrt_libs"])

    def test_find_gpu_libs_empty(self):
        r = gc.find_gpu_libs(self.dir)
        self.assertIsNone(r["ort_dylib"])
        self.assertEqual(r["lib_dirs"], [])
        self.assertEqual(gc.main(["libpaths", "--site-packages", self.dir]), 1)

    def test_libpaths_joins_the_provider_parts_and_torchs_libraries(self):
        self.touch("parts", "onnxruntime", "capi", "libonnxruntime.so.1.31.1")
        self.touch("parts", "onnxruntime", "capi", "libonnxruntime_providers_cuda.so")
        self.touch("torch-site", "nvidia", "cudnn", "lib", "libcudnn.so.9")
        out = os.path.join(self.dir, "r.json")
        gc.main(["init", "--out", out])
        p = subprocess.run([sys.executable, os.path.join(SCRIPTS, "gpu_check.py"), "libpaths", "--site-packages",
                            os.path.join(self.dir, "parts"), "--site-packages", os.path.join(self.dir, "torch-site"),
                            "--out", out], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
        self.assertEqual(p.returncode, 0, p.stderr)
        ort, ld = p.stdout.splitlines()
        self.assertTrue(ort.startswith("ORT_DYLIB_PATH=") and ort.endswith("libonnxruntime.so.1.31.1"), ort)
        self.assertEqual([os.path.relpath(d, self.dir) for d in ld.split("=", 1)[1].split(":")],
                         ["parts/onnxruntime/capi", "torch-site/nvidia/cudnn/lib"])
        with open(out) as f:
            self.assertEqual(json.load(f)["results"]["libraries"]["providers"], ["cuda"])


class Wheels(Tmp):
    REGEX = "regex-2026.11.19-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"

    def test_tags(self):
        self.assertEqual(gc.wheel_tags("open_clip_torch-3.3.0-py3-none-any.whl"),
                         ("open-clip-torch", "3.3.0", ["py3"], ["none"], ["any"]))
        name, _, py, abi, plat = gc.wheel_tags(self.REGEX)
        self.assertEqual((name, py, abi), ("regex", ["cp312"], ["cp312"]))
        self.assertEqual(plat, ["manylinux2014_x86_64", "manylinux_2_17_x86_64"])
        with self.assertRaises(ValueError):
            gc.wheel_tags("notawheel.tar.gz")
        with self.assertRaises(ValueError):
            gc.wheel_tags("a-1.whl")

    def test_fits(self):
        x86 = "x86_64"
        self.assertTrue(gc.wheel_fits("tqdm-4.70.1-py3-none-any.whl", (3, 10), x86))
        self.assertTrue(gc.wheel_fits(self.REGEX, (3, 12), x86))
        self.assertFalse(gc.wheel_fits(self.REGEX, (3, 11), x86))
        self.assertFalse(gc.wheel_fits(self.REGEX, (3, 12), "aarch64"))
        abi3 = "wcwidth-0.9.5-cp310-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
        self.assertTrue(gc.wheel_fits(abi3, (3, 13), x86))
        self.assertTrue(gc.wheel_fits(abi3, (3, 10), x86))
        self.assertFalse(gc.wheel_fits(abi3, (3, 9), x86))
        self.assertFalse(gc.wheel_fits("x-1-cp312-cp312-win_amd64.whl", (3, 12), x86))

    def test_pick_reports_packages_without_a_wheel_for_this_python(self):
        files = ["ftfy-6.3.1-py3-none-any.whl", self.REGEX,
                 "regex-2026.11.19-cp313-cp313-manylinux_2_17_x86_64.whl"]
        chosen, missing = gc.pick_wheels(files, (3, 13), "x86_64")
        self.assertEqual(sorted(chosen), ["ftfy", "regex"])
        self.assertIn("cp313", chosen["regex"])
        self.assertEqual(missing, [])
        chosen, missing = gc.pick_wheels(files, (3, 11), "x86_64")
        self.assertEqual((sorted(chosen), missing), (["ftfy"], ["regex"]))

    def make_wheel(self, name):
        path = os.path.join(self.dir, "w", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        mod = name.split("-")[0]
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(f"{mod}/__init__.py", f"NAME = {mod!r}\n")
        return path

    def test_wheels_unpacks_what_fits_and_fails_on_what_does_not(self):
        self.make_wheel("purepkg-1.0-py3-none-any.whl")
        target = os.path.join(self.dir, "t")
        gc.main(["init", "--out", self.out])
        self.assertEqual(gc.main(["wheels", "--dir", os.path.join(self.dir, "w"), "--target", target,
                                  "--out", self.out]), 0)
        self.assertTrue(os.path.exists(os.path.join(target, "purepkg", "__init__.py")))
        self.assertEqual(self.doc()["results"]["wheels"]["installed"], {"purepkg": "purepkg-1.0-py3-none-any.whl"})
        self.make_wheel("binpkg-1.0-cp27-cp27mu-manylinux1_x86_64.whl")  # no CPython 2.7 here
        self.assertEqual(gc.main(["wheels", "--dir", os.path.join(self.dir, "w"), "--target", target]), 1)
        self.assertEqual(gc.main(["wheels", "--dir", os.path.join(self.dir, "empty"), "--target", target]), 1)


class Summary(Tmp):
    def test_finish_writes_the_summary_and_its_exit_status_says_whether_all_passed(self):
        txt = os.path.join(self.dir, "gpu_check.txt")
        gc.main(["init", "--out", self.out, "--meta", "mode=dry-run"])
        gc.main(["record", "--out", self.out, "--name", "cpu_server", "--rc", "0"])
        gc.main(["record", "--out", self.out, "--name", "gpu_torch", "--status", "skipped", "--note", "dry run"])
        gc.main(["merge", "--out", self.out, "--key", "server.cpu", "--value", json.dumps(
            {"runs": {"defaults": {"images": {"items_per_s": 12.5, "concurrency": 4, "items_per_request": 8,
                                              "latency_ms_p50": 90.0, "errors": 0}}}})])
        gc.main(["merge", "--out", self.out, "--key", "preprocess", "--value", json.dumps(
            [{"file": "/x/coffee_4000x3000.jpg", "bytes": 1232518, "threads": 2, "images_per_s": 40.25}])])
        self.assertEqual(gc.main(["finish", "--out", self.out, "--summary", txt]), 0)
        with open(txt) as f:
            text = f.read()
        self.assertIn("mode dry-run", text)
        self.assertIn("server cpu defaults images: 12.5/s", text)
        self.assertIn("coffee_4000x3000.jpg (1232518 bytes): 40.2 images/s on 2 threads", text)
        self.assertRegex(text, r"gpu_torch +skipped .*dry run")
        gc.main(["record", "--out", self.out, "--name", "preprocess", "--rc", "1"])
        self.assertEqual(gc.main(["finish", "--out", self.out, "--summary", txt]), 1)
        gc.main(["record", "--out", self.out, "--name", "preprocess", "--rc", "124"])
        self.assertEqual(gc.main(["finish", "--out", self.out]), 1)


class Bundle(Tmp):
    SH = os.path.join(SCRIPTS, "gpu_bundle.sh")

    def make_bundle(self, payload=b"hello", tamper=False):
        b = os.path.join(self.dir, "stage", "clip-serve-gpu")
        os.makedirs(os.path.join(b, "bin"), exist_ok=True)
        with open(os.path.join(b, "bin", "x"), "wb") as f:
            f.write(payload)
        digest = hashlib.sha256(b"other" if tamper else payload).hexdigest()
        with open(os.path.join(b, "SHA256SUMS"), "w") as f:
            f.write(f"{digest}  bin/x\n")
        tgz = os.path.join(self.dir, "b.tar.gz")
        subprocess.run(["tar", "-C", os.path.dirname(b), "-czf", tgz, "clip-serve-gpu"], check=True)
        return tgz

    def check(self, *args):
        return subprocess.run(["bash", self.SH, *args], capture_output=True, text=True)

    def test_script_parses_and_rejects_unknown_flags(self):
        subprocess.run(["bash", "-n", self.SH], check=True)
        p = self.check("--no-such-flag")
        self.assertEqual(p.returncode, 2)
        self.assertIn("unknown argument", p.stderr)
        self.assertIn("64 MiB", self.check("--help").stdout)

    def test_check_passes_a_small_intact_bundle(self):
        p = self.check("--check", self.make_bundle())
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("checksums ok", p.stderr)

    def test_check_fails_loudly_over_the_size_limit(self):
        p = self.check("--check", self.make_bundle(os.urandom(1536 * 1024)), "--max-mib", "1")
        self.assertEqual(p.returncode, 1)
        self.assertIn("over the 1 MiB", p.stderr)

    def test_check_fails_on_a_changed_file_or_a_missing_bundle(self):
        p = self.check("--check", self.make_bundle(tamper=True))
        self.assertEqual(p.returncode, 1)
        self.assertIn("checksums differ", p.stderr)
        p = self.check("--check", os.path.join(self.dir, "none.tar.gz"))
        self.assertEqual(p.returncode, 1)
        self.assertIn("no such file", p.stderr)


FAKE_SERVE = r"""#!/usr/bin/env python3
import http.server, json, sys, threading
args = sys.argv[1:]
if "--fail" in args:
    print("clip-serve: --provider cuda: this binary was built without the `cuda` feature", file=sys.stderr)
    sys.exit(1)
port = lambda flag: int(args[args.index(flag) + 1].rsplit(":", 1)[1])
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def reply(self, body, ctype="application/json"):
        self.send_response(200); self.send_header("content-type", ctype); self.end_headers(); self.wfile.write(body)
    def do_GET(self):
        if self.path == "/readyz":
            self.reply(b"ready", "text/plain")
        else:
            self.reply(b'clip_model_info{provider="cpu",precision="fp32"} 1\nother 2\n', "text/plain")
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        data = [{"index": i, "embedding": [1.0, 0.5 if str(x).startswith("data:") else -0.5]}
                for i, x in enumerate(body["input"])]
        self.reply(json.dumps({"data": data}).encode())
for flag in ("--probe-addr", "--http-addr"):
    s = http.server.ThreadingHTTPServer(("127.0.0.1", port(flag)), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
threading.Event().wait()
"""
FAKE_BENCH = r"""#!/usr/bin/env python3
import json, sys
a = sys.argv[1:]
get = lambda f: a[a.index(f) + 1]
json.dump({"modality": get("--modality"), "concurrency": int(get("--concurrency")), "items_per_request":
           int(get("--items")), "items_per_s": 42.0, "errors": 0, "junk": 1}, open(get("--out"), "w"))
"""


class Server(Tmp):
    def fake(self, name, text):
        p = os.path.join(self.dir, name)
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, 0o755)
        return p

    def setUp(self):
        super().setUp()
        self.serve, self.bench = self.fake("clip-serve", FAKE_SERVE), self.fake("clip-bench", FAKE_BENCH)
        self.images = os.path.join(self.dir, "images")
        os.makedirs(self.images)
        for n in ("a.jpg", "b.png"):
            with open(os.path.join(self.images, n), "wb") as f:
                f.write(b"not really an image")
        self.texts = os.path.join(self.dir, "texts.json")
        with open(self.texts, "w") as f:
            json.dump([{"name": "t1", "text": "a cat"}, "a dog"], f)
        gc.main(["init", "--out", self.out])

    def server(self, *extra):
        return gc.main(["server", "--out", self.out, "--bin", self.serve, "--bench-bin", self.bench,
                        "--model-dir", "m", "--provider", "cpu", "--images", self.images, "--texts", self.texts,
                        "--duration", "1s", "--limit", "60", "--start-timeout", "20", *extra])

    def test_throughput_vectors_and_parity(self):
        vecs = os.path.join(self.dir, "v.json")
        self.assertEqual(self.server("--save-vectors", vecs), 0)
        run = self.doc()["results"]["server"]["cpu"]["runs"]["defaults"]
        self.assertEqual(run["images"], {"modality": "images", "concurrency": 16, "items_per_request": 8,
                                         "items_per_s": 42.0, "errors": 0})
        self.assertEqual(run["texts"]["items_per_s"], 42.0)
        self.assertEqual(run["model_info"], ['clip_model_info{provider="cpu",precision="fp32"} 1'])
        with open(vecs) as f:
            v = json.load(f)
        self.assertEqual(sorted(v["images"]), ["a.jpg", "b.png"])
        self.assertEqual(sorted(v["texts"]), ["1", "t1"])
        self.assertEqual(self.server("--ref", vecs, "--key", "again", "--modalities", "texts"), 0)
        self.assertTrue(self.doc()["results"]["server"]["again"]["parity"]["pass"])
        v["texts"]["t1"] = [0.0, 1.0]  # another server's vector for one text
        with open(vecs, "w") as f:
            json.dump(v, f)
        self.assertEqual(self.server("--ref", vecs, "--key", "third", "--modalities", "texts"), 1)
        par = self.doc()["results"]["server"]["third"]["parity"]
        self.assertFalse(par["pass"])
        self.assertEqual(par["modalities"]["texts"]["worst"][0]["item"], "t1")

    def test_leaves_no_work_dir_behind(self):
        tmp = os.path.join(self.dir, "tmp")
        os.makedirs(tmp)
        old = tempfile.tempdir
        tempfile.tempdir = tmp
        try:
            self.assertEqual(self.server("--modalities", "texts"), 0)
        finally:
            tempfile.tempdir = old
        self.assertEqual(os.listdir(tmp), [])

    def test_a_server_that_does_not_start_fails_once_not_per_batch_size(self):
        self.assertEqual(self.server("--server-arg=--fail", "--batches", "1,32,256"), 1)
        res = self.doc()["results"]["server"]["cpu"]
        self.assertEqual(list(res["runs"]), ["b1"])
        self.assertIn("during start-up", res["runs"]["b1"]["error"])
        self.assertIn("built without the `cuda` feature", res["server_log_tail"])


EXPORT_PY = os.path.join(os.path.dirname(SCRIPTS), ".cache", "export-venv", "bin", "python")
SKELETON_CHECK = r"""
import json, os, subprocess, sys
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto
src, dst, script = sys.argv[1:4]
rng = np.random.default_rng(0)
w = (rng.standard_normal((64, 128)) * 0.02 + 0.5).astype(np.float32)   # 8192 values: goes external
b = rng.standard_normal(128).astype(np.float32)                         # 128 values: stays exact
for tower in ("visual", "textual"):
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y0"]), helper.make_node("Add", ["y0", "b"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 128])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    os.makedirs(os.path.join(src, tower))
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), os.path.join(src, tower, "model.onnx"))
with open(os.path.join(src, "config.json"), "w") as f:
    f.write("{}")
subprocess.run([sys.executable, script, "strip", "--model-dir", src, "--out", dst], check=True)
m = json.load(open(os.path.join(dst, "skeleton.json")))
t = m["towers"]["visual"]["tensors"]
assert [x["name"] for x in t] == ["w"], t
assert abs(t[0]["mean"] - float(w.mean())) < 1e-6 and abs(t[0]["std"] - float(w.std())) < 1e-6, t
assert os.path.getsize(os.path.join(dst, "visual", "model.onnx")) < 2000   # the weights are not in the graph
assert not os.path.exists(os.path.join(dst, "visual", "model.weights")) and os.path.exists(os.path.join(dst, "config.json"))
subprocess.run([sys.executable, script, "fill", "--model-dir", dst], check=True)
s = ort.InferenceSession(os.path.join(dst, "visual", "model.onnx"), providers=["CPUExecutionProvider"])
y = s.run(None, {"x": np.zeros((3, 64), np.float32)})[0]
assert y.shape == (3, 128) and np.array_equal(y[0], b), "the small bias must be exact"
filled = np.fromfile(os.path.join(dst, "visual", "model.weights"), dtype=np.float32, count=8192)
assert abs(filled.mean() - w.mean()) < 0.01 and abs(filled.std() - w.std()) < 0.002, (filled.mean(), filled.std())
assert not np.array_equal(filled.reshape(64, 128), w)
print("ok")
"""


@unittest.skipUnless(os.path.exists(EXPORT_PY), "no .cache/export-venv (scripts/requirements-export.txt)")
class Skeleton(Tmp):
    def test_strip_then_fill_gives_a_loadable_model_of_the_same_scale(self):
        p = subprocess.run([EXPORT_PY, "-c", SKELETON_CHECK, os.path.join(self.dir, "src"),
                            os.path.join(self.dir, "dst"), os.path.join(SCRIPTS, "model_skeleton.py")],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("ok", p.stdout)


if __name__ == "__main__":
    unittest.main()
