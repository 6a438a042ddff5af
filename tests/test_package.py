"""The package imports and works without Triton or the compiled extension (pure-PyTorch fallback)."""
import json
import subprocess
import sys
import textwrap


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_without_triton_and_extension():
    out = run_python("""
        import sys, json, warnings
        sys.modules["triton"] = None          # import triton -> ImportError
        sys.modules["radi_fast._C"] = None    # the compiled sampler is missing
        import torch, radi_fast
        info = radi_fast.backend_info()
        s, mc = torch.randn(2, 30), torch.randn(2, 4, 30)
        p = radi_fast.radi_pairwise_loss(s, mc)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            l1 = radi_fast.radi_listwise_loss(s, mc.mean(1), hot=5, cold=3)
            l2 = radi_fast.radi_listwise_loss(s, mc.mean(1), hot=5, cold=3)
        print(json.dumps({"triton": info["triton"], "sampler": info["sampler"],
                          "pairwise_cuda": info["pairwise_cuda"], "finite": bool(torch.isfinite(p + l1 + l2)),
                          "warnings": [str(w.message) for w in caught]}))
    """)
    info = json.loads(out.strip().splitlines()[-1])
    assert info["triton"] is None and info["pairwise_cuda"] == "torch"
    assert info["sampler"].startswith("torch")
    assert info["finite"]


def test_public_api_names():
    import radi_fast

    for name in ["classification_loss", "pairwise_uncertainty", "sinkhorn_margin_weights", "radi_pairwise_loss",
                 "radi_listwise_loss", "RadiPairwiseLoss", "RadiListwiseLoss", "backend_info"]:
        assert callable(getattr(radi_fast, name)), name
    for name in ["acc_at_1", "hit_at_k", "ndcg_at_k", "ivqa_accuracy"]:
        assert callable(getattr(radi_fast.metrics, name)), name
    assert radi_fast.backend_info()["torch"]
