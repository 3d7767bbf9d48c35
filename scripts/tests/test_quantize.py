"""Unit tests for scripts/quantize.py's pure parts: CPU flags and the reduce_range choice, the gate decision, the
statistics (numpy), the token-id graph check (onnx). No torch, no model. Tests needing numpy or onnx are skipped
where those are not installed (plain python3); the export venv has both.

    python3 -m unittest discover -s scripts/tests
"""

import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import quantize as q  # noqa: E402

try:
    import numpy as np
except ImportError:  # plain python3
    np = None
try:
    import onnx
    from onnx import TensorProto, helper
except ImportError:
    onnx = None

CPUINFO_VNNI = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 9R14 96-Core Processor
flags		: fpu vme sse sse2 avx avx2 fma avx512f avx512dq avx512_vnni avx512_bf16
processor	: 1
model name	: AMD EPYC 9R14 96-Core Processor
flags		: fpu vme sse sse2 avx avx2 fma avx512f avx512dq avx512_vnni avx512_bf16
"""
CPUINFO_AVX2 = """processor	: 0
model name	: AMD EPYC 7B13
flags		: fpu sse sse2 avx avx2 fma
"""


class CpuFlags(unittest.TestCase):
    def test_parse(self):
        f = q.parse_cpu_flags(CPUINFO_VNNI)
        self.assertEqual((f["avx2"], f["avx512f"], f["avx512_vnni"]), (True, True, True))
        self.assertEqual(f["model_name"], "AMD EPYC 9R14 96-Core Processor")
        f = q.parse_cpu_flags(CPUINFO_AVX2)
        self.assertEqual((f["avx2"], f["avx512f"], f["avx512_vnni"]), (True, False, False))
        f = q.parse_cpu_flags("")
        self.assertEqual(f["avx2"], False)

    def test_reduce_range(self):
        self.assertEqual(q.choose_reduce_range(q.parse_cpu_flags(CPUINFO_VNNI))[0], False)
        on, why = q.choose_reduce_range(q.parse_cpu_flags(CPUINFO_AVX2))
        self.assertTrue(on)
        self.assertIn("avx512_vnni", why)
        self.assertTrue(q.choose_reduce_range({"avx512_vnni": True}, "on")[0])
        self.assertFalse(q.choose_reduce_range({"avx512_vnni": False}, "off")[0])
        with self.assertRaises(ValueError):
            q.choose_reduce_range({}, "maybe")

    def test_this_machine(self):
        f = q.read_cpu_flags()
        for k in q.RELEVANT_CPU_FLAGS:
            self.assertIn(k, f)
        self.assertEqual(q.read_cpu_flags("/nonexistent")["avx2"], None)


class Json(unittest.TestCase):
    def test_json_safe(self):
        import json

        doc = q.json_safe({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}, "e": "x"})
        self.assertEqual(doc, {"a": None, "b": [None, 1.5], "c": {"d": None}, "e": "x"})
        json.dumps(doc, allow_nan=False)


class Files(unittest.TestCase):
    def test_variant_file(self):
        self.assertEqual(q.variant_file("visual", "int8"), "visual/model.int8.onnx")
        self.assertEqual(q.variant_file("textual", "fp16"), "textual/model.fp16.onnx")
        # bf16 is model.onnx run by OpenVINO: never a file to write, or to delete on a failed gate.
        self.assertEqual(q.variant_file("visual", "bf16"), "visual/model.onnx")
        self.assertIn("bf16", q.FILELESS_VARIANTS)

    def test_bf16_needs_bf16_hardware_and_takes_the_servers_load_config(self):
        self.assertTrue(q.has_bf16(q.parse_cpu_flags("flags\t: avx2 avx512_bf16\n")))
        self.assertTrue(q.has_bf16(q.parse_cpu_flags("flags\t: amx_bf16\n")))
        self.assertFalse(q.has_bf16(q.parse_cpu_flags("flags\t: avx2 avx512f avx512_vnni\n")))
        cfg = json.loads(q.openvino_load_config(2))
        self.assertEqual(cfg, {"CPU": {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": "2",
                                       "PERFORMANCE_HINT": "LATENCY"}})
        with self.assertRaises(ValueError):
            q.variant_file("audio", "int8")
        with self.assertRaises(ValueError):
            q.variant_file("visual", "int4")


class Gate(unittest.TestCase):
    T = dict(q.DEFAULT_THRESHOLDS)

    def towers(self, vis=0.999, txt=0.999):
        return {"visual": {"cosine": {"min": vis}}, "textual": {"cosine": {"min": txt}}}

    def test_all_pass(self):
        ag = {"zero_shot_top1": {"image_tower": 1.0, "text_tower": 1.0, "both": 0.96},
              "text_to_image_top1": {"image_tower": 0.99, "text_tower": 0.95, "both": 0.97}}
        d = q.gate_decision(self.towers(), ag, self.T)
        self.assertTrue(d["pass"], d)
        self.assertTrue(d["towers"]["visual"]["pass"] and d["towers"]["textual"]["pass"])

    def test_cosine_fails_one_tower(self):
        ag = {"zero_shot_top1": {"image_tower": 1.0, "text_tower": 1.0, "both": 1.0}}
        d = q.gate_decision(self.towers(vis=0.98), ag, self.T)
        self.assertFalse(d["pass"])
        self.assertFalse(d["towers"]["visual"]["pass"])
        self.assertTrue(d["towers"]["textual"]["pass"])
        self.assertIn("cosine min", d["towers"]["visual"]["failures"][0])

    def test_own_agreement_fails_only_that_tower(self):
        ag = {"text_to_image_top1": {"image_tower": 1.0, "text_tower": 0.90, "both": 0.96}}
        d = q.gate_decision(self.towers(), ag, self.T)
        self.assertTrue(d["towers"]["visual"]["pass"])
        self.assertFalse(d["towers"]["textual"]["pass"])

    def test_combined_agreement_fails_both(self):
        ag = {"text_to_image_top1": {"image_tower": 0.96, "text_tower": 0.96, "both": 0.90}}
        d = q.gate_decision(self.towers(), ag, self.T)
        self.assertFalse(d["towers"]["visual"]["pass"])
        self.assertFalse(d["towers"]["textual"]["pass"])

    def test_missing_cosine_fails_and_thresholds_apply(self):
        d = q.gate_decision({"visual": {"cosine": {"min": None}}}, {}, self.T)
        self.assertFalse(d["pass"])
        t = dict(self.T, image_min_cosine=0.9999)
        self.assertFalse(q.gate_decision(self.towers(vis=0.9995), {}, t)["pass"])
        self.assertFalse(q.gate_decision({}, {}, self.T)["pass"], "no tower evaluated must not pass")


@unittest.skipIf(np is None, "numpy not installed")
class Stats(unittest.TestCase):
    def test_cosines_and_summary(self):
        a = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
        b = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
        c = q.row_cosines(a, b)
        np.testing.assert_allclose(c, [1.0, 1.0, 2 ** -0.5])
        s = q.summarize_cosines(c)
        self.assertEqual(s["n"], 3)
        self.assertAlmostEqual(s["min"], 2 ** -0.5)
        self.assertLessEqual(s["min"], s["p1"])
        self.assertLessEqual(s["p1"], s["mean"])
        self.assertIsNone(q.summarize_cosines([])["min"])
        with self.assertRaises(ValueError):
            q.row_cosines(a, b[:2])

    def test_zero_shot_and_agreement(self):
        # 2 labels x 2 templates, label-major; images close to label 1 then label 0.
        text = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1]], dtype=float)
        clf = q.zero_shot_classifier(text, 2, 2)
        self.assertEqual(clf.shape, (2, 3))
        np.testing.assert_allclose(np.linalg.norm(clf, axis=1), 1.0)
        imgs = np.array([[0.1, 1, 0], [1, 0.2, 0]])
        np.testing.assert_array_equal(q.top1(imgs, clf), [1, 0])
        self.assertEqual(q.agreement([1, 0, 1, 1], [1, 0, 0, 1]), 0.75)
        with self.assertRaises(ValueError):
            q.zero_shot_classifier(text, 3, 2)
        m = q.margins(imgs, clf)
        self.assertTrue((m > 0).all())

    def test_minimal_seq_len(self):
        ids = np.zeros((3, 77), dtype=np.int64)
        ids[:, 0] = 49406
        ids[0, 3], ids[1, 9], ids[2, 5] = 49407, 49407, 49407
        self.assertEqual(q.minimal_seq_len(ids), 10)
        ids[1, 4] = 49407  # a literal EOT earlier in the row: pooling (argmax) takes the first
        self.assertEqual(q.minimal_seq_len(ids), 6)

    def test_evaluate_variant_identity_and_noise(self):
        rng = np.random.default_rng(0)
        n_l, n_t, off = 3, 2, 4
        txt = q.l2_normalize(rng.standard_normal((off + n_l * n_t, 8)))
        img = q.l2_normalize(rng.standard_normal((5, 8)))
        cal = {"labels": ["a", "b", "c"], "templates": ["{}", "a {}"], "prompt_offset": off}
        ref = {"visual": img, "textual": txt}
        ev = q.evaluate_variant(ref, {"visual": img.copy(), "textual": txt.copy()}, cal)
        self.assertAlmostEqual(ev["towers"]["visual"]["cosine"]["min"], 1.0)
        for metric in ("zero_shot_top1", "text_to_image_top1"):
            self.assertEqual(ev["agreements"][metric], {"image_tower": 1.0, "text_tower": 1.0, "both": 1.0})
        self.assertEqual(ev["disagreements"]["text_to_image"], [])
        # Only the image tower replaced: no text_tower / both combos.
        ev = q.evaluate_variant(ref, {"visual": img[::-1].copy(), "textual": None}, cal)
        self.assertEqual(set(ev["agreements"]["zero_shot_top1"]), {"image_tower"})
        self.assertNotIn("textual", ev["towers"])


@unittest.skipIf(onnx is None, "onnx not installed")
class TokenIdCheck(unittest.TestCase):
    def graph(self, cast_to=None):
        nodes = [helper.make_node("Gather", ["table", "text"], ["emb"], name="embed")]
        ids = "text"
        if cast_to is not None:
            nodes.append(helper.make_node("Cast", ["text"], ["ids_cast"], to=cast_to, name="cast_ids"))
            ids = "ids_cast"
        nodes.append(helper.make_node("ArgMax", [ids], ["pos"], axis=-1, keepdims=0, name="argmax"))
        nodes.append(helper.make_node("Shape", ["text"], ["shape"], name="shape"))
        g = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("text", TensorProto.INT64, ["batch", "sequence"])],
            [helper.make_tensor_value_info("emb", TensorProto.FLOAT, None),
             helper.make_tensor_value_info("pos", TensorProto.INT64, None)],
            [helper.make_tensor("table", TensorProto.FLOAT, [4, 2], [0.0] * 8)])
        return helper.make_model(g)

    def test_integer_path_is_clean(self):
        self.assertEqual(q.check_token_ids_integer(self.graph()), [])
        self.assertEqual(q.check_token_ids_integer(self.graph(cast_to=TensorProto.INT32)), [])

    def test_cast_to_float_is_flagged(self):
        for t in (TensorProto.FLOAT16, TensorProto.FLOAT):
            p = q.check_token_ids_integer(self.graph(cast_to=t))
            self.assertEqual(len(p), 1, p)
            self.assertIn("cast_ids", p[0])


if __name__ == "__main__":
    unittest.main()


class OpenvinoPluginPathTest(unittest.TestCase):
    """ONNX Runtime resolves a relative library path beside its own library: the plugin path is made absolute
    (from the working directory) before it is registered. A stand-in onnxruntime module records the call."""

    def test_a_relative_plugin_path_is_registered_absolute(self):
        import tempfile
        import types

        registered = []
        fake = types.SimpleNamespace(
            register_execution_provider_library=lambda name, path: registered.append((name, path)),
            get_ep_devices=lambda: [],
            OrtHardwareDeviceType=types.SimpleNamespace(CPU=1),
        )
        saved_module, saved_cwd = sys.modules.get("onnxruntime"), os.getcwd()
        with tempfile.TemporaryDirectory() as d:
            lib = os.path.join(d, "libonnxruntime_providers_openvino_plugin.so")
            open(lib, "wb").close()
            os.chdir(d)
            sys.modules["onnxruntime"] = fake
            q.openvino_cpu_device.registered = None
            try:
                with self.assertRaises(RuntimeError) as raised:
                    q.openvino_cpu_device("libonnxruntime_providers_openvino_plugin.so")
            finally:
                os.chdir(saved_cwd)
                q.openvino_cpu_device.registered = None
                if saved_module is None:
                    sys.modules.pop("onnxruntime", None)
                else:
                    sys.modules["onnxruntime"] = saved_module
            self.assertEqual(registered, [(q.OPENVINO_EP_NAME, os.path.realpath(lib))])
        self.assertIn("offers no CPU device", str(raised.exception))
