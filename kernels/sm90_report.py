"""Compile every RADI-P kernel for sm_90 (H100/H200) on any machine, GPU or not, and report
registers, spills and the instruction mix of each kernel's loops (from the SASS).

    python kernels/sm90_report.py [--json PATH] [--sass-dir DIR]

Must run WITHOUT ``TRITON_INTERPRET`` (the interpreter replaces the compiler). Uses ptxas,
cuobjdump and nvdisasm shipped with Triton (``triton/backends/nvidia/bin``). Used by
``tests/test_triton_compile.py`` and quoted in ``docs/triton.md``.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The launch defaults of radi_fast.ops.pairwise_triton.TritonConfig for the benchmark shape (T = 10).
T_BENCH = 10


def _tools():
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def kernel_specs():
    """(name, kernel, signature, constexprs, options) for every kernel at its default launch."""
    import triton.language as tl

    from radi_fast.ops.pairwise_triton import TritonConfig, kernels

    ks = kernels()
    cfg = TritonConfig()
    TP = max(16, 1 << (T_BENCH + 1).bit_length())
    specs = []
    stats_sig = {"mc_ptr": "*fp32", "stride_mb": "i32", "stride_mt": "i32", "stride_mn": "i32", "order_ptr": "*i64",
                 "stride_ob": "i32", "nvalid_ptr": "*i64", "lam_ptr": "*fp32", "y_ptr": "*fp32", "hs_ptr": "*fp32",
                 "K": "i32", "T": "i32", "TP": "constexpr", "BK": "constexpr", "AUTO": "constexpr",
                 "COMPUTE": "constexpr"}
    specs.append(("pairwise_stats", ks.stats, stats_sig,
                  {"TP": TP, "BK": cfg.stats_bk, "AUTO": True, "COMPUTE": tl.float32}, {"num_warps": 4}))
    specs.append(("pairwise_stats_bf16", ks.stats, dict(stats_sig, mc_ptr="*bf16"),
                  {"TP": TP, "BK": cfg.stats_bk, "AUTO": True, "COMPUTE": tl.float32}, {"num_warps": 4}))
    sink_sig = {"y_ptr": "*fp32", "hs_ptr": "*fp32", "nvalid_ptr": "*i64", "src_ptr": "*fp32", "dst_ptr": "*fp32",
                "prev_delta_ptr": "*fp32", "next_delta_ptr": "*fp32", "part_ptr": "*fp32", "tol": "fp32", "K": "i32",
                "NSPLIT": "i32",
                "T": "constexpr", "TP": "constexpr", "BM": "constexpr", "BN": "constexpr", "USE_DOT": "constexpr",
                "SHIFT": "constexpr", "WRITE_DELTA": "constexpr", "COMPUTE": "constexpr",
                "SHIFT_LO": "constexpr", "SHIFT_HI": "constexpr", "PHASE": "constexpr"}
    for bm, bn, warps in ((cfg.sink_bm, cfg.sink_bn, cfg.sink_warps), (128, 64, 8), (64, 64, 4)):
        name = "sinkhorn_half_step" + ("" if (bm, bn, warps) == (cfg.sink_bm, cfg.sink_bn, cfg.sink_warps)
                                       else f"_{bm}x{bn}w{warps}")
        specs.append((name, ks.half_step, sink_sig,
                      {"T": T_BENCH, "TP": TP, "BM": bm, "BN": bn, "USE_DOT": True, "SHIFT": True,
                       "WRITE_DELTA": True, "COMPUTE": tl.float32, "SHIFT_LO": 2.0 ** cfg.shift_lo_log2,
                       "SHIFT_HI": 2.0 ** cfg.shift_hi_log2, "PHASE": 0},
                      {"num_warps": warps, "num_stages": cfg.sink_stages}))
    # variants that must compile too (no spill requirement): fp64 inputs, the FFMA logits
    for name, extra, warps in (("sinkhorn_half_step_fp64", {"COMPUTE": tl.float64}, 4),
                               ("sinkhorn_half_step_split", {"PHASE": 1, "BM": cfg.sink_bm, "BN": cfg.sink_bn},
                                cfg.sink_warps),
                               ("sinkhorn_half_step_finalize", {"PHASE": 2, "BM": cfg.sink_bm, "BN": cfg.sink_bn},
                                cfg.sink_warps),
                               ("sinkhorn_half_step_ffma", {"USE_DOT": False, "BM": 64, "BN": 64}, 8)):
        consts = {"T": T_BENCH, "TP": TP, "BM": 64, "BN": 64, "USE_DOT": True, "SHIFT": True, "WRITE_DELTA": True,
                  "COMPUTE": tl.float32, "SHIFT_LO": 2.0 ** cfg.shift_lo_log2, "SHIFT_HI": 2.0 ** cfg.shift_hi_log2,
                  "PHASE": 0}
        consts.update(extra)
        sig = dict(sink_sig)
        if consts["COMPUTE"] == tl.float64:
            sig.update({k: "*fp64" for k in ("y_ptr", "hs_ptr", "src_ptr", "dst_ptr", "prev_delta_ptr",
                                             "next_delta_ptr", "part_ptr")})
        specs.append((name, ks.half_step, sig, consts, {"num_warps": warps, "num_stages": cfg.sink_stages}))
    loss_sig = {"y_ptr": "*fp32", "hs_ptr": "*fp32", "f_ptr": "*fp32", "g_ptr": "*fp32", "nvalid_ptr": "*i64", "lam_ptr": "*fp32",
                "teacher_ptr": "*fp32", "student_ptr": "*fp32", "ids_ptr": "*i64", "rowhash_ptr": "*i64",
                "loss_part_ptr": "*fp32", "cnt_ptr": "*i32", "margin": "fp32", "K": "i32",
                "NB": "i32", "MODE": "constexpr", "T": "constexpr", "TP": "constexpr", "BM": "constexpr",
                "BN": "constexpr", "COMPUTE": "constexpr"}
    for mode, label in ((0, "ot"), (1, "uniform"), (2, "random"), (3, "uncertainty")):
        specs.append((f"margin_ranking_{label}", ks.loss, loss_sig,
                      {"MODE": mode, "T": T_BENCH, "TP": TP, "BM": cfg.loss_bm, "BN": cfg.loss_bn,
                       "COMPUTE": tl.float32}, {"num_warps": cfg.loss_warps}))
    # the small tiles the CUDA run of tests/test_triton_pairwise.py uses (they must compile too)
    for name, phase, bm, bn in (("test_sinkhorn_32x16", 0, 32, 16), ("test_sinkhorn_16x16_phase1", 1, 16, 16),
                                ("test_sinkhorn_16x16_phase2", 2, 16, 16), ("test_sinkhorn_64x32_phase1", 1, 64, 32)):
        specs.append((name, ks.half_step, sink_sig,
                      {"T": T_BENCH, "TP": TP, "BM": bm, "BN": bn, "USE_DOT": True, "SHIFT": True,
                       "WRITE_DELTA": True, "COMPUTE": tl.float32, "SHIFT_LO": 0.5, "SHIFT_HI": 2.0, "PHASE": phase},
                      {"num_warps": cfg.sink_warps, "num_stages": cfg.sink_stages}))
    specs.append(("test_margin_ranking_ot_16x32", ks.loss, loss_sig,
                  {"MODE": 0, "T": T_BENCH, "TP": TP, "BM": 16, "BN": 32, "COMPUTE": tl.float32},
                  {"num_warps": cfg.loss_warps}))
    sig64 = dict(loss_sig)
    sig64.update({k: "*fp64" for k in ("y_ptr", "hs_ptr", "f_ptr", "g_ptr", "lam_ptr", "teacher_ptr", "student_ptr",
                                       "loss_part_ptr")})
    specs.append(("margin_ranking_ot_fp64", ks.loss, sig64,
                  {"MODE": 0, "T": T_BENCH, "TP": TP, "BM": 64, "BN": 64, "COMPUTE": tl.float64}, {"num_warps": 4}))
    return specs


def parse_sass(text):
    ins = []
    for line in text.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+([^;]*);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    return ins


def opcode(s):
    t = s.split()
    o = t[1] if t[0].startswith("@") else t[0]
    return o.split(".")[0]


def loop_mix(ins):
    """Instruction counts of each loop (a backward branch and the code it jumps back over)."""
    out = []
    for addr, s in ins:
        m = re.search(r"BRA (0x[0-9a-f]+)", s)
        if m and int(m.group(1), 16) < addr:
            lo = int(m.group(1), 16)
            body = [x for a, x in ins if lo <= a <= addr]
            c = collections.Counter(opcode(x) for x in body)
            out.append({"range": f"{lo:#x}-{addr:#x}", "instructions": len(body),
                        **{k: c[k] for k in ("MUFU", "FFMA", "FADD", "FMUL", "FMNMX", "FSEL", "HGMMA", "LDS", "LDG",
                                             "ATOM", "RED", "IMAD", "LOP3")}})
    return out


def resource_usage(cubin_path):
    text = subprocess.run([os.path.join(_tools(), "cuobjdump"), "--dump-resource-usage", cubin_path],
                          capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    return {"registers": int(m.group(1)), "stack": int(m.group(2)), "local": int(m.group(4))}


def compile_all(sass_dir=None):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET", "0") not in ("0", ""):
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter replaces the compiler")
    report = {"target": "cuda sm_90", "triton": triton.__version__, "kernels": {}}
    workdir = sass_dir or tempfile.mkdtemp(prefix="radi_sm90_")
    os.makedirs(workdir, exist_ok=True)
    for name, fn, sig, consts, options in kernel_specs():
        compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                                  target=GPUTarget("cuda", 90, 32), options=dict(enable_fp_fusion=True, **options))
        cubin = os.path.join(workdir, f"{name}.cubin")
        with open(cubin, "wb") as fh:
            fh.write(compiled.asm["cubin"])
        sass = subprocess.run([os.path.join(_tools(), "cuobjdump"), "-sass", cubin], capture_output=True, text=True,
                              check=True).stdout
        with open(os.path.join(workdir, f"{name}.sass"), "w") as fh:
            fh.write(sass)
        entry = resource_usage(cubin)
        entry["shared_bytes"] = compiled.metadata.shared
        entry["options"] = options
        entry["constexprs"] = {k: str(v) for k, v in consts.items()}
        entry["spills"] = entry["stack"] > 0 or entry["local"] > 0
        entry["loops"] = loop_mix(parse_sass(sass))
        report["kernels"][name] = entry
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--sass-dir", help="keep cubins and SASS here")
    args = ap.parse_args(argv)
    report = compile_all(args.sass_dir)
    for name, e in report["kernels"].items():
        print(f"{name:36s} regs {e['registers']:3d} stack {e['stack']:5d} local {e['local']} "
              f"smem {e['shared_bytes']:6d} spills {e['spills']}")
        for loop in e["loops"]:
            print(f"    loop {loop['range']:>15s}: {loop['instructions']:4d} instr, MUFU {loop['MUFU']:3d}, "
                  f"FFMA {loop['FFMA']:3d}, FADD {loop['FADD']:3d}, FMNMX {loop['FMNMX']:3d}, "
                  f"HGMMA {loop['HGMMA']}, LDS {loop['LDS']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return report


if __name__ == "__main__":
    main()
