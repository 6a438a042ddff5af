"""Compile every RADI-P Triton kernel for sm_90 (H100/H200) on any machine, GPU or not, and
report registers, spills, occupancy and the instruction mix of each kernel's loops (from SASS).

    python bench/sm90_report.py [--json PATH] [--sass-dir DIR]

Must run WITHOUT ``TRITON_INTERPRET`` (the interpreter replaces the compiler). Uses ptxas and
cuobjdump shipped with Triton (``triton/backends/nvidia/bin``). Used by
``tests/test_triton_compile.py`` (which asserts the hot loops' per-pair counts) and quoted in
docs/triton.md. Per loop, ``per_pair`` divides the counts by the pairs one thread handles per
iteration; ``LDS`` counts only loads that can execute (``@!PT`` placeholders never do).
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
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

T_BENCH = 10  # the benchmark's MC passes
REGISTERS_PER_SM = 65536
SHARED_PER_SM = 233472  # 228 KB; each resident block also reserves 1 KB
MAX_WARPS_PER_SM = 64
COUNTED = ("MUFU", "FFMA", "FADD", "FMUL", "FMNMX", "FSEL", "FSETP", "HGMMA", "LDS", "LDSM", "STS", "LDG", "LDGSTS",
           "SHFL", "BAR", "ATOM", "RED", "ATOMG", "REDG", "IMAD", "LOP3", "ISETP", "LDL", "STL")


def _tools():
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def kernel_specs():
    """(name, kernel, signature, constexprs, options, pairs per thread per loop iteration) for
    every kernel variant the launchers can select, at the benchmark shape."""
    import torch
    import triton.language as tl

    from radi_fast._constants import UNCERTAINTY_EPS
    from radi_fast.kernels import margin_ranking, pairwise_stats, sinkhorn
    from radi_fast.ops.teacher import MAX_COST
    from radi_fast.ops.triton_config import TritonConfig, half_step_maxnreg, point_lanes, symmetric_maxnreg

    cfg = TritonConfig()
    TP = point_lanes(T_BENCH)
    f32, f64 = tl.float32, tl.float64
    specs = []

    def launch_options(warps, stages, maxnreg):
        return dict(num_warps=warps, num_stages=stages, **({"maxnreg": maxnreg} if maxnreg else {}))

    def ptrs(names, dtype):
        return {n: dtype for n in names}

    raw_sig = {"mc_ptr": "*fp32", "stride_mb": "i32", "stride_mt": "i32", "stride_mn": "i32", "order_ptr": "*i64",
               "stride_ob": "i32", "nvalid_ptr": "*i64", "out_ptr": "*fp32", "unit_ptr": "*fp32",
               "lam_ptr": "*fp32", "lamk_ptr": "*fp32", "fixed_lam_ptr": "*fp64", "teacher_ptr": "*fp32",
               "stride_tb": "i32", "stride_tn": "i32", "tie_lo_ptr": "*i32", "tie_hi_ptr": "*i32", "npairs_ptr": "*i64",
               "zb_ptr": "*fp32", "zs_ptr": "*fp32", "yt_ptr": "*fp32", "hs_ptr": "*fp32", "student_ptr": "*fp32",
               "stride_sb": "i32", "stride_sn": "i32", "sorted_ptr": "*fp32", "noise": "fp32", "K": "i32",
               "KP": "i32", "T": "i32", "TP": "constexpr", "BK": "constexpr", "COMPUTE": "constexpr",
               "FIXED_LAM": "constexpr", "SPLIT": "constexpr", "LANE_MAJOR": "constexpr", "STUDENT": "constexpr",
               "INV_MAX_COST": "constexpr", "BIG": "constexpr", "TINY": "constexpr"}
    raw64 = dict(raw_sig, **ptrs(("mc_ptr", "out_ptr", "unit_ptr", "lam_ptr", "lamk_ptr", "teacher_ptr", "zb_ptr",
                                  "zs_ptr", "yt_ptr", "hs_ptr", "student_ptr", "sorted_ptr"), "*fp64"))
    # (the op's calls gather the student's scores too; sinkhorn_log_potentials_triton does not)
    for name, sig, fixed, fp64, lane_major, student in (
            ("teacher_prepare", raw_sig, False, False, False, True),
            ("teacher_prepare_bf16_fixed_lam", dict(raw_sig, mc_ptr="*bf16", student_ptr="*bf16"), True, False, False,
             True),
            ("teacher_prepare_lane_major", raw_sig, False, False, True, True),
            ("teacher_prepare_fp64", raw64, False, True, False, True),
            ("teacher_prepare_no_student", raw_sig, False, False, False, False)):
        dt = torch.float64 if fp64 else torch.float32
        if not fixed:  # the launcher passes n_pairs (int64) as the unread placeholder
            sig = dict(sig, fixed_lam_ptr="*i64")
        specs.append((name, pairwise_stats.teacher_prepare_kernel, sig,
                      {"TP": TP, "BK": cfg.stats_bk, "COMPUTE": f64 if fp64 else f32, "FIXED_LAM": fixed,
                       "SPLIT": not fp64, "LANE_MAJOR": lane_major, "STUDENT": student,
                       "INV_MAX_COST": 1.0 / MAX_COST[dt],
                       "BIG": torch.finfo(dt).max, "TINY": torch.finfo(dt).tiny}, {"num_warps": 8}, None))
    stats_sig = {"mc_ptr": "*fp32", "stride_mb": "i32", "stride_mt": "i32", "stride_mn": "i32", "nvalid_ptr": "*i64",
                 "lam_ptr": "*fp32"}
    lam_sig = dict(stats_sig, noise="fp32", T="i32", TP="constexpr", BK="constexpr", COMPUTE="constexpr")
    for name, sig, dtype in (("pairwise_lam", lam_sig, f32),
                             ("pairwise_lam_fp64", dict(lam_sig, mc_ptr="*fp64", lam_ptr="*fp64"), f64)):
        specs.append((name, pairwise_stats.pairwise_lam_kernel, sig, {"TP": TP, "BK": cfg.stats_bk, "COMPUTE": dtype},
                      {"num_warps": 4}, None))
    pts_sig = dict(stats_sig, zb_ptr="*fp32", zs_ptr="*fp32", yt_ptr="*fp32", hs_ptr="*fp32", K="i32", KP="i32",
                   T="i32", TP="constexpr", BK="constexpr", SPLIT="constexpr", COMPUTE="constexpr",
                   LANE_MAJOR="constexpr")
    for lane_major in (False, True):
        specs.append(("pairwise_points" + ("_lane_major" if lane_major else ""), pairwise_stats.pairwise_points_kernel, pts_sig,
                      {"TP": TP, "BK": cfg.stats_bk, "SPLIT": True, "COMPUTE": f32, "LANE_MAJOR": lane_major},
                      {"num_warps": 4}, None))
    specs.append(("pairwise_points_fp64", pairwise_stats.pairwise_points_kernel,
                  dict(pts_sig, **ptrs(("mc_ptr", "lam_ptr", "zb_ptr", "zs_ptr", "yt_ptr", "hs_ptr"), "*fp64")),
                  {"TP": TP, "BK": cfg.stats_bk, "SPLIT": False, "COMPUTE": f64, "LANE_MAJOR": False},
                  {"num_warps": 4}, None))

    step_sig = {"zb_ptr": "*fp32", "zs_ptr": "*fp32", "hs_ptr": "*fp32", "nvalid_ptr": "*i64", "pot_ptr": "*fp32",
                "part_ptr": "*fp32", "ticket_ptr": "*i32", "prev_delta_ptr": "*fp32", "next_delta_ptr": "*fp32",
                "tol_ptr": "*fp32", "K": "i32", "KP": "i32", "T": "constexpr", "TP": "constexpr", "BM": "constexpr",
                "BN": "constexpr", "G_SIDE": "constexpr", "SPLIT": "constexpr", "COMPUTE": "constexpr",
                "ACC": "constexpr", "WRITE_DELTA": "constexpr", "SHIFT_LO": "constexpr", "SHIFT_HI": "constexpr"}
    f64_ptrs = ("zb_ptr", "zs_ptr", "hs_ptr", "pot_ptr", "part_ptr", "prev_delta_ptr", "next_delta_ptr", "tol_ptr")

    def half_step(name, c, side=0, acc=None, fp64=False, lo=cfg.shift_lo_log2, hi=cfg.shift_hi_log2):
        c = c if acc is None else replace(c, sink_acc=acc)
        consts = {"T": T_BENCH, "TP": TP, "BM": c.sink_bm, "BN": c.sink_bn, "G_SIDE": side, "SPLIT": not fp64,
                  "COMPUTE": f64 if fp64 else f32, "ACC": c.sink_acc, "WRITE_DELTA": side == 1,
                  "SHIFT_LO": 2.0 ** lo, "SHIFT_HI": 2.0 ** hi}
        sig = dict(step_sig, **ptrs(f64_ptrs, "*fp64")) if fp64 else step_sig
        options = launch_options(c.sink_warps, c.sink_stages, half_step_maxnreg(c, not fp64))
        specs.append((name, sinkhorn.sinkhorn_half_step_kernel, sig, consts, options,
                      c.sink_bm * c.sink_bn // (32 * c.sink_warps)))

    fp64_cfg = replace(cfg, sink_bm=64, sink_bn=64, sink_warps=4, loss_bm=64, loss_bn=64, loss_warps=4)
    half_step("sinkhorn_half_step", cfg)
    half_step("sinkhorn_half_step_g", cfg, side=1)
    half_step("sinkhorn_half_step_acc", cfg, acc=True)
    for bm, bn, w, st in ((128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 8, 3)):
        half_step(f"sinkhorn_half_step_{bm}x{bn}w{w}s{st}", replace(cfg, sink_bm=bm, sink_bn=bn, sink_warps=w, sink_stages=st))
    half_step("sinkhorn_half_step_64x64w4s3_acc", replace(cfg, sink_bm=64, sink_bn=64, sink_warps=4, sink_stages=3),
              acc=True)
    half_step("sinkhorn_half_step_fp64", fp64_cfg, side=1, fp64=True)

    # the gate and range buffers by base pointer and row (i32, unspecialised: every launch of a call
    # relaunches one compiled kernel, ops/direct_launch.py)
    sym_sig = dict(step_sig, other_ptr="*fp32", gate_ptr="*fp32", gate_row="i32", rng_ptr="*fp32", rng_row="i32",
                   NSLOT="i32", BS="constexpr", BMV="constexpr", SYM_SPREAD="constexpr")
    sym_sig = {k: v for k, v in sym_sig.items() if k not in ("BM", "BN", "ACC")}
    sym_order = ("zb_ptr", "zs_ptr", "hs_ptr", "nvalid_ptr", "pot_ptr", "other_ptr", "part_ptr", "ticket_ptr",
                 "gate_ptr", "gate_row", "rng_ptr", "rng_row", "tol_ptr", "K", "KP", "NSLOT",
                 "T", "TP", "BS", "BMV", "G_SIDE", "SPLIT", "COMPUTE", "WRITE_DELTA", "SHIFT_LO", "SHIFT_HI", "SYM_SPREAD")
    sym_sig = {k: sym_sig[k] for k in sym_order}

    def symmetric_step(name, c, side=0, fp64=False):
        consts = {"T": T_BENCH, "TP": TP, "BS": c.sym_block, "BMV": c.sym_rows, "G_SIDE": side, "SPLIT": not fp64,
                  "COMPUTE": f64 if fp64 else f32, "WRITE_DELTA": side == 1, "SHIFT_LO": 2.0 ** c.shift_lo_log2,
                  "SHIFT_HI": 2.0 ** c.shift_hi_log2, "SYM_SPREAD": float(c.sym_spread)}
        sig = dict(sym_sig, **ptrs(f64_ptrs[:5] + ("tol_ptr", "other_ptr", "gate_ptr", "rng_ptr"), "*fp64")) \
            if fp64 else sym_sig
        options = launch_options(c.sym_warps, c.sym_stages, symmetric_maxnreg(c, not fp64))
        specs.append((name, sinkhorn.sinkhorn_symmetric_half_step_kernel, sig, consts, options,
                      c.sym_rows * c.sym_block // (32 * c.sym_warps)))

    symmetric_step("sinkhorn_symmetric", cfg)
    symmetric_step("sinkhorn_symmetric_64x128w4", replace(cfg, sym_block=128, sym_rows=64))
    symmetric_step("sinkhorn_symmetric_g", cfg, side=1)
    symmetric_step("sinkhorn_symmetric_fp64", cfg, side=1, fp64=True)

    loss_sig = {"zb_ptr": "*fp32", "zs_ptr": "*fp32", "yt_ptr": "*fp32", "nvalid_ptr": "*i64", "lam_ptr": "*fp32",
                "tie_lo_ptr": "*i32", "tie_hi_ptr": "*i32", "student_ptr": "*fp32", "ids_ptr": "*i64",
                "rowhash_ptr": "*i64", "order_ptr": "*i64", "npairs_ptr": "*i64", "loss_part_ptr": "*fp32",
                "scale_ptr": "*fp32", "grad_ptr": "*fp32", "margin_ptr": "*fp32", "K": "i32", "KP": "i32", "NB": "i32",
                "N": "i32",
                "MODE": "constexpr", "T": "constexpr", "TP": "constexpr", "BM": "constexpr", "BN": "constexpr",
                "SPLIT": "constexpr", "COMPUTE": "constexpr", "EPS": "constexpr"}

    def loss(name, c, mode, fp64=False):
        consts = {"MODE": mode, "T": T_BENCH, "TP": TP, "BM": c.loss_bm, "BN": c.loss_bn, "SPLIT": not fp64,
                  "COMPUTE": f64 if fp64 else f32, "EPS": UNCERTAINTY_EPS}
        sig = dict(loss_sig, **ptrs(("zb_ptr", "zs_ptr", "yt_ptr", "lam_ptr", "student_ptr", "loss_part_ptr",
                                     "scale_ptr", "grad_ptr", "margin_ptr"), "*fp64")) if fp64 else loss_sig
        warps = c.loss_warps if mode == 0 else c.loss_warps_other
        specs.append((name, margin_ranking.margin_ranking_kernel, sig, consts, {"num_warps": warps, "num_stages": c.loss_stages},
                      c.loss_bm * c.loss_bn // (32 * warps)))

    for mode, label in ((0, "ot"), (1, "uniform"), (2, "random"), (3, "uncertainty")):
        loss(f"margin_ranking_{label}", cfg, mode)
    for bm, bn, w in ((128, 64, 8), (128, 128, 8), (64, 64, 8)):
        loss(f"margin_ranking_ot_{bm}x{bn}w{w}", replace(cfg, loss_bm=bm, loss_bn=bn, loss_warps=w), 0)
    loss("margin_ranking_ot_fp64", fp64_cfg, 0, fp64=True)

    sym_loss_order = ("zb_ptr", "zs_ptr", "nvalid_ptr", "tie_hi_ptr", "student_ptr", "ids_ptr", "rowhash_ptr",
                      "order_ptr", "npairs_ptr", "loss_part_ptr", "work_ptr", "loss_ptr", "grad_ptr", "margin_ptr", "K",
                      "KP", "NB", "N", "MODE", "T", "TP", "BS", "SPLIT", "COMPUTE")
    sym_loss_sig = {k: dict(loss_sig, work_ptr="*i32", loss_ptr="*fp32", BS="constexpr")[k] for k in sym_loss_order}

    def symmetric_loss(name, c, mode, fp64=False):
        consts = {"MODE": mode, "T": T_BENCH, "TP": TP, "BS": c.loss_bm, "SPLIT": not fp64,
                  "COMPUTE": f64 if fp64 else f32}
        sig = dict(sym_loss_sig, **ptrs(("zb_ptr", "zs_ptr", "student_ptr", "loss_part_ptr", "loss_ptr", "grad_ptr",
                                         "margin_ptr"), "*fp64")) if fp64 else sym_loss_sig
        warps = c.loss_warps if mode == 0 else c.loss_warps_other
        specs.append((name, margin_ranking.margin_ranking_symmetric_kernel, sig, consts,
                      {"num_warps": warps, "num_stages": c.loss_stages}, c.loss_bm * c.loss_bm // (32 * warps)))

    for mode, label in ((0, "ot"), (1, "uniform"), (2, "random")):
        symmetric_loss(f"margin_ranking_symmetric_{label}", cfg, mode)
    symmetric_loss("margin_ranking_symmetric_ot_128w8", replace(cfg, loss_bm=128, loss_warps=8), 0)
    symmetric_loss("margin_ranking_symmetric_ot_fp64", fp64_cfg, 0, fp64=True)

    # the small tiles that the CUDA run of tests/test_triton_pairwise.py selects
    for bm, bn, acc in ((32, 16, False), (16, 64, True), (64, 32, False), (16, 16, False)):
        c = replace(cfg, sink_bm=bm, sink_bn=bn, loss_bm=bn, loss_bn=bm)
        half_step(f"test_half_step_{bm}x{bn}", c, side=1, acc=acc, lo=-1, hi=1)
        loss(f"test_margin_ranking_ot_{bn}x{bm}", c, 0)
    for bs in (16, 32):  # the symmetric loss kernel's blocks in those tests, every mode it serves
        for mode, label in ((0, "ot"), (1, "uniform"), (2, "random")):
            symmetric_loss(f"test_margin_ranking_symmetric_{label}_{bs}", replace(cfg, loss_bm=bs), mode)
    # the accelerated Sinkhorn schemes' per-sample kernels (kernels/sinkhorn_accel.py)
    from radi_fast.kernels import sinkhorn_accel
    from radi_fast.ops.sinkhorn_accel_triton import ANDERSON_BLOCK, ANDERSON_WARPS, BLOCK, history_rows
    from radi_fast.ops.sinkhorn_schemes import ANDERSON_MEMORY

    relax_sig = {"zb_ptr": "*fp32", "zs_ptr": "*fp32", "hs_ptr": "*fp32", "nvalid_ptr": "*i64", "before_ptr": "*fp32",
                 "pot_ptr": "*fp32", "other_ptr": "*fp32", "prev_delta_ptr": "*fp32", "next_delta_ptr": "*fp32",
                 "tol_ptr": "*fp32", "omega_ptr": "*fp32", "previous_ptr": "*fp32", "last_ratio_ptr": "*fp32",
                 "rho_ptr": "*fp32", "rejected_ptr": "*i32", "relaxed_ptr": "*i32", "omega_max_ptr": "*fp32",
                 "rng_ptr": "*fp32", "K": "i32", "KP": "i32", "T": "constexpr", "TP": "constexpr", "SIDE": "constexpr",
                 "SPLIT": "constexpr", "COMPUTE": "constexpr", "STEP": "constexpr", "OBSERVE": "constexpr",
                 "BLOCK": "constexpr", "RECORD_RANGE": "constexpr"}
    anderson_sig = {"zb_ptr": "*fp32", "zs_ptr": "*fp32", "hs_ptr": "*fp32", "nvalid_ptr": "*i64", "x_ptr": "*fp32",
                    "y_ptr": "*fp32", "prev_delta_ptr": "*fp32", "next_delta_ptr": "*fp32", "tol_ptr": "*fp32",
                    "hx_ptr": "*fp32", "hr_ptr": "*fp32", "count_ptr": "*i64", "best_ptr": "*fp32", "ridge_ptr": "*fp64",
                    "rng_ptr": "*fp32", "K": "i32", "KP": "i32", "head": "i32", "last": "i32", "T": "constexpr", "TP": "constexpr", "SPLIT": "constexpr",
                    "COMPUTE": "constexpr", "M": "constexpr", "MP": "constexpr", "BLOCK": "constexpr",
                    "RECORD_RANGE": "constexpr"}
    mp = history_rows(ANDERSON_MEMORY)
    for fp64 in (False, True):
        suffix, compute = ("_fp64", f64) if fp64 else ("", f32)
        as64 = lambda sig: {k: ("*fp64" if v == "*fp32" else v) for k, v in sig.items()} if fp64 else sig  # noqa: E731
        for side, step in ((0, True), (1, True), (1, False)):
            consts = {"T": T_BENCH, "TP": TP, "SIDE": side, "SPLIT": not fp64, "COMPUTE": compute, "STEP": step,
                      "OBSERVE": side == 1, "BLOCK": BLOCK, "RECORD_RANGE": True}
            specs.append((f"sinkhorn_relax_{side}{'' if step else '_observe'}{suffix}", sinkhorn_accel.sinkhorn_relax_kernel,
                          as64(relax_sig), consts, {"num_warps": 4}, None))
        consts = {"T": T_BENCH, "TP": TP, "SPLIT": not fp64, "COMPUTE": compute, "M": ANDERSON_MEMORY, "MP": mp,
                  "BLOCK": ANDERSON_BLOCK, "RECORD_RANGE": True}
        specs.append((f"sinkhorn_anderson{suffix}", sinkhorn_accel.sinkhorn_anderson_kernel, as64(anderson_sig), consts,
                      {"num_warps": ANDERSON_WARPS}, None))
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


def loop_mix(ins, pairs_per_thread=None):
    """Instruction counts of each loop (a backward branch and the code it jumps back over)."""
    out = []
    for addr, s in ins:
        m = re.search(r"BRA (0x[0-9a-f]+)", s)
        if m and int(m.group(1), 16) < addr:
            lo = int(m.group(1), 16)
            body = [x for a, x in ins if lo <= a <= addr and not x.startswith("@!PT")]  # @!PT never runs
            c = collections.Counter(opcode(x) for x in body)
            loop = {"range": f"{lo:#x}-{addr:#x}", "instructions": len(body), **{k: c[k] for k in COUNTED}}
            if pairs_per_thread:
                loop["per_pair"] = {k: round(loop[k] / pairs_per_thread, 3) for k in ("instructions",) + COUNTED}
            out.append(loop)
    return out


def resource_usage(cubin_path):
    text = subprocess.run([os.path.join(_tools(), "cuobjdump"), "--dump-resource-usage", cubin_path],
                          capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    return {"registers": int(m.group(1)), "stack": int(m.group(2)), "local": int(m.group(4))}


def occupancy(registers: int, shared: int, warps: int) -> dict:
    """Resident blocks and warps per SM on sm_90 (registers allocated per warp in units of 256)."""
    per_warp = -(-registers * 32 // 256) * 256
    by_regs = REGISTERS_PER_SM // per_warp // warps
    by_smem = SHARED_PER_SM // (shared + 1024)
    blocks = max(0, min(by_regs, by_smem, 32, MAX_WARPS_PER_SM // warps))
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * warps,
            "limited_by": "registers" if by_regs <= by_smem else "shared memory"}


def compile_all(sass_dir=None):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from radi_fast._backend import triton_interpret

    if triton_interpret():
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter replaces the compiler")
    report = {"target": "cuda sm_90", "triton": triton.__version__, "kernels": {}}
    workdir = sass_dir or tempfile.mkdtemp(prefix="radi_sm90_")
    os.makedirs(workdir, exist_ok=True)
    for name, fn, sig, consts, options, pairs in kernel_specs():
        # what the launcher's specialisation sees: 16-byte aligned tensors, KP a multiple of 16
        attrs = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k, v in sig.items()
                 if v.startswith("*") or k == "KP"}
        compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                                  target=GPUTarget("cuda", 90, 32), options=dict(enable_fp_fusion=True, **options))
        cubin = os.path.join(workdir, f"{name}.cubin")
        with open(cubin, "wb") as fh:
            fh.write(compiled.asm["cubin"])
        with open(os.path.join(workdir, f"{name}.ptx"), "w") as fh:
            fh.write(compiled.asm["ptx"])
        sass = subprocess.run([os.path.join(_tools(), "cuobjdump"), "-sass", cubin], capture_output=True, text=True,
                              check=True).stdout
        with open(os.path.join(workdir, f"{name}.sass"), "w") as fh:
            fh.write(sass)
        entry = resource_usage(cubin)
        entry["shared_bytes"] = compiled.metadata.shared
        entry["options"] = options
        entry["constexprs"] = {k: str(v) for k, v in consts.items()}
        entry["signature"] = sig
        entry["pairs_per_thread"] = pairs
        entry["spills"] = entry["stack"] > 0 or entry["local"] > 0
        entry["occupancy"] = occupancy(entry["registers"], entry["shared_bytes"], options["num_warps"])
        entry["loops"] = loop_mix(parse_sass(sass), pairs)
        report["kernels"][name] = entry
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--sass-dir", help="keep cubins and SASS here")
    args = ap.parse_args(argv)
    report = compile_all(args.sass_dir)
    print(f"Triton {report['triton']}, {report['target']}")
    for name, e in report["kernels"].items():
        occ = e["occupancy"]
        print(f"{name:34s} regs {e['registers']:3d} spills {str(e['spills']):5s} smem {e['shared_bytes']:6d} "
              f"-> {occ['blocks_per_sm']} blocks / {occ['warps_per_sm']} warps per SM ({occ['limited_by']})")
        for loop in e["loops"]:
            pp = loop.get("per_pair")
            tail = (f" | per pair: {pp['instructions']:.2f} instr, MUFU {pp['MUFU']:.2f}, LDS {pp['LDS'] + pp['LDSM']:.2f}"
                    f", FSEL {pp['FSEL']:.2f}") if pp else ""
            print(f"    loop {loop['range']:>15s}: {loop['instructions']:4d} instr, MUFU {loop['MUFU']:3d}, "
                  f"FADD {loop['FADD']:3d}, FSEL {loop['FSEL']:3d}, HGMMA {loop['HGMMA']}, LDS {loop['LDS']}, "
                  f"LDSM {loop['LDSM']}, BAR {loop['BAR']}{tail}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return report


if __name__ == "__main__":
    main()
