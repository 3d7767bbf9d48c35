"""Unit tests for scripts/gpu_check.py: the CPU-side parts (arguments, the JSON result file, stage time limits,
parity arithmetic, library discovery, the sweep plan). Standard library only: no GPU, no torch, no numpy.

    python3 -m unittest discover -s scripts/tests
"""

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest

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

        a = argparse.Namespace(bin="clip-serve", model_dir="m", provider="tensorrt", trt_fp16=True,
                               trt_engine_cache_dir="/c", intra_op_threads=None, server_arg=["--x"],
                               batch_delay="2ms")
        plan = gc.sweep_plan([256])[0]
        cmd = gc.server_cmd(a, 1234, "/d", plan)
        self.assertEqual(cmd[:2], ["clip-serve", "serve"])
        self.assertIn("127.0.0.1:1234", cmd)
        for flag in ("--trt-fp16", "--trt-engine-cache-dir", "--max-batch-size", "--max-batch-delay", "--x"):
            self.assertIn(flag, cmd)
        self.assertEqual(cmd[cmd.index("--max-batch-size") + 1], "256")
        a.provider, a.trt_fp16 = "cuda", False
        cmd = gc.server_cmd(a, 1, "/d", gc.sweep_plan([1])[0])
        self.assertNotIn("--trt-fp16", cmd)
        self.assertNotIn("--max-batch-delay", cmd)


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


if __name__ == "__main__":
    unittest.main()
