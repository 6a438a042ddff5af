"""The trainer: every scheme end to end at toy size, exact resume, atomic checkpoints, config, errors."""
import json
import math
import os
import sys

import pytest
import torch

from radi_fast import train as T
from radi_fast.checkpoint import load_checkpoint, save_checkpoint
from radi_fast.config import Config, config_from_dict, parse_args, resolve_auto
from radi_fast.schemes import SCHEMES, SchemeConfig, build_scheme

TINY = {"n_train": 64, "n_val": 32, "n_test": 32, "n_answers": 120, "d_model": 16, "n_layers": 2, "n_heads": 2,
        "batch_size": 32, "teacher_epochs": 1, "student_epochs": 1, "mc_samples": 3, "hot": 10, "cold": 5,
        "top_k": 20, "progress": False, "curves": False}


def tiny(tmp_path, **kw):
    return config_from_dict({**TINY, "out_dir": str(tmp_path), **kw})


# ------------------------------------------------------------------ end to end
ALL_SCHEMES = ("baseline,label_smoothing,pseudo_label,kd,dkd,ctkd,radi_p,radi_l,"
               "radi_p:margin_mode=uniform,radi_p:margin_mode=random,radi_p:margin_mode=uncertainty,"
               "radi_l:sampling=exp:list_loss=listmle,radi_l:sampling=random:list_loss=stlistnet,"
               "radi_l:sampling=full:list_loss=ndcg_loss2pp")


def test_every_scheme_end_to_end(tmp_path, capsys):
    assert T.main(["--config", _write(tmp_path / "c.json", {**TINY, "out_dir": str(tmp_path / "run")}),
                   "--schemes", ALL_SCHEMES]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["schemes"]) == set(ALL_SCHEMES.split(","))
    assert set(results["stages"]) == {"teacher", "individual"}
    for name, r in results["schemes"].items():
        assert set(r["test"]) >= {"acc1", "hit5", "ndcg5"}, name
        assert all(0 <= v <= 100 for v in r["test"].values()), name
        assert math.isfinite(r["history"][-1]["train_loss"]), name
        assert f"| {name} |" in out
    assert "| Acc@1 | Hit@5 | nDCG@5 |" in out


@pytest.mark.parametrize("init", ["teacher", "scratch"])
def test_student_inits_and_bf16(tmp_path, init):
    results = T.run(tiny(tmp_path, student_init=init, schemes="radi_p", precision="bf16"))
    assert set(results["stages"]) == {"teacher"}
    assert math.isfinite(results["schemes"]["radi_p"]["history"][-1]["train_loss"])


def test_student_init_teacher_starts_from_the_teacher(tmp_path):
    cfg = tiny(tmp_path, student_init="teacher", schemes="baseline", lr=1e-12)  # lr ~ 0: student stays put
    results = T.run(cfg)
    assert results["schemes"]["baseline"]["test"] == pytest.approx(results["stages"]["teacher"]["test"])


# ------------------------------------------------------------------ checkpoints and resume
def _student_weights(out_dir, stage):
    return torch.load(os.path.join(out_dir, "checkpoints", f"{stage}.pt"), weights_only=True)["model"]


def test_resume_is_exact(tmp_path):
    # 2 steps per epoch, 2 epochs per stage: teacher = steps 1-4, individual 5-8, student 9-12
    kw = dict(teacher_epochs=2, student_epochs=2, schemes="radi_l:list_loss=stlistnet")
    straight = T.run(tiny(tmp_path / "a", **kw))
    for halt in (10, 3, 9):  # after student epoch 1; inside the teacher's first epoch; mid student epoch 1
        out = tmp_path / f"h{halt}"
        with pytest.raises(T.Halted):
            T.run(tiny(out, halt_after_steps=halt, **kw))
        resumed = T.run(tiny(out, resume=True, **kw))
        for stage in ("teacher", "individual", "student-radi_l_list_loss=stlistnet"):
            a, b = _student_weights(tmp_path / "a", stage), _student_weights(out, stage)
            assert all(torch.equal(a[k], b[k]) for k in a), (halt, stage)
        key = "radi_l:list_loss=stlistnet"
        assert resumed["schemes"][key]["test"] == straight["schemes"][key]["test"]
        assert [h["train_loss"] for h in resumed["schemes"][key]["history"]] == \
            [h["train_loss"] for h in straight["schemes"][key]["history"]]


def test_resume_reuses_finished_stages_and_adds_schemes(tmp_path, capsys):
    T.run(tiny(tmp_path, schemes="baseline"))
    capsys.readouterr()
    results = T.run(tiny(tmp_path, schemes="baseline,kd", resume=True))
    err = capsys.readouterr().err  # the log is on stderr
    assert "[teacher] finished" in err and "[student-baseline] finished" in err
    assert set(results["schemes"]) == {"baseline", "kd"}


def test_resume_with_other_settings_fails_clearly(tmp_path):
    T.run(tiny(tmp_path, schemes="baseline"))
    with pytest.raises(ValueError, match=r"other settings.*optim\.lr"):
        T.run(tiny(tmp_path, schemes="baseline", resume=True, lr=0.5))


def test_checkpoint_write_is_atomic_and_keeps_the_previous_one(tmp_path, monkeypatch):
    from radi_fast import checkpoint as C
    path = str(tmp_path / "ck.pt")
    save_checkpoint(path, {"v": 1})
    assert os.listdir(tmp_path) == ["ck.pt"]
    save_checkpoint(path, {"v": 2})
    assert sorted(os.listdir(tmp_path)) == ["ck.pt", "ck.pt.prev"]
    assert load_checkpoint(path)["v"] == 2 and load_checkpoint(path + ".prev")["v"] == 1

    def crash(p, state):
        with open(p, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(C, "_write", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"v": 3})
    monkeypatch.undo()
    assert load_checkpoint(path)["v"] == 2 and load_checkpoint(path + ".prev")["v"] == 1  # both intact
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(str(tmp_path / "bad.pt"))


# ------------------------------------------------------------------ configuration and errors
def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def test_config_file_and_flags(tmp_path):
    f = _write(tmp_path / "c.json", {"optim": {"lr": 0.01, "batch_size": 8}, "margin_mode": "uniform"})
    cfg = parse_args(["--config", f, "--batch_size", "16", "--no-progress"])
    assert cfg.optim.lr == 0.01 and cfg.optim.batch_size == 16 and cfg.scheme.margin_mode == "uniform"
    assert cfg.run.progress is False
    with pytest.raises(ValueError, match="unknown setting 'bogus'"):
        parse_args(["--config", _write(tmp_path / "b.json", {"bogus": 1})])
    with pytest.raises(ValueError, match="'lr' must be float"):
        parse_args(["--config", _write(tmp_path / "b.json", {"lr": "fast"})])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        parse_args(["--config", str(tmp_path / "bad.json")])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        parse_args(["--config", str(tmp_path / "nope.json")])


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--schemes", "--student_init", "--precision", "--resume", "--margin_mode", "--sampling",
                 "--data_dir", "--n_answers", "--mc_samples"):
        assert flag in out


def test_auto_defaults():
    cfg = resolve_auto(Config())
    assert cfg.optim.lr == 2e-3 and cfg.scheme.top_k == 100
    real = Config()
    real.data.dataset = "ivqa"
    real = resolve_auto(real)
    assert real.optim.lr == 5e-5 and real.scheme.top_k == 2500


def test_bad_data_files_exit_with_a_clear_error(tmp_path, capsys):
    assert T.main(["--dataset", "ivqa", "--data_dir", str(tmp_path / "missing"), "--out_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and os.path.join(str(tmp_path), "missing", "vocab.json") in err
    assert T.main(["--schemes", "baseline,nonsense", "--out_dir", str(tmp_path)]) == 2
    assert "unknown scheme 'nonsense'" in capsys.readouterr().err


def test_real_data_end_to_end(tmp_path):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_data import _make_dataset
    root = _make_dataset(tmp_path / "ivqa", "ivqa")
    results = T.run(tiny(tmp_path / "out", dataset="ivqa", data_dir=str(root), schemes="baseline,radi_p",
                         batch_size=2, cache_dir=str(tmp_path / "cache")))
    assert results["schemes"]["radi_p"]["test"]["acc1"] >= 0


# ------------------------------------------------------------------ the schemes themselves
def _logits(b=4, n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, generator=g), torch.randn(b, n, generator=g)


def test_build_scheme_specs():
    s = build_scheme("radi_p:margin_mode=uniform:alpha=10:margin=0.1")
    assert s.cfg.margin_mode == "uniform" and s.cfg.radi_p_alpha == 10.0 and s.cfg.margin == 0.1
    assert s.spec == "radi_p:margin_mode=uniform:alpha=10:margin=0.1" and s.mc_samples == 10
    for bad, msg in [("nope", "unknown scheme"), ("kd:tau", "bad override"), ("kd:bogus=1", "bad override"),
                     ("kd:kd_tau=hot", "bad value for kd_tau")]:
        with pytest.raises(ValueError, match=msg):
            build_scheme(bad)
    assert set(SCHEMES) == {"baseline", "label_smoothing", "pseudo_label", "kd", "dkd", "ctkd", "radi_p", "radi_l",
                            "kd_radi_p", "kd_radi_l"}


def test_radi_p_counts_sinkhorn_iterations_without_reading_them_per_step():
    # a per-step float() of the iteration count synchronised the GPU in every training step (the
    # host then waited for the whole forward before queueing the backward); the sum stays a
    # tensor until the epoch's summary or a checkpoint reads it
    s, t = _logits(4, 30, seed=3)
    mc = t[:, None, :] + 0.5 * torch.randn(4, 10, 30, generator=torch.Generator().manual_seed(4))
    scheme = build_scheme("radi_p")
    scheme.start_epoch(0, 1)
    expected = 0.0
    for _ in range(2):
        _, parts = scheme.extra(s, None, None, mc, None)
        expected += float(parts["sinkhorn_iterations"]) * 4
    assert isinstance(scheme.iterations[0], torch.Tensor) and scheme.iterations[1] == 8
    assert scheme.epoch_summary() == {"sinkhorn_iterations": expected / 8}
    state = scheme.state_dict()
    assert state == {"iterations": [expected, 8]} and isinstance(state["iterations"][0], float)
    fresh = build_scheme("radi_p")
    fresh.load_state_dict(state)
    assert fresh.epoch_summary() == scheme.epoch_summary()


def test_label_smoothing_and_pseudo_labels():
    s, t = _logits()
    targets = torch.zeros(4, 30)
    targets[torch.arange(4), torch.tensor([1, 2, 3, 4])] = 1
    base, _ = build_scheme("baseline").loss(s, targets)
    assert torch.allclose(build_scheme("label_smoothing:ls_sigma=0").loss(s, targets)[0], base)
    ls = build_scheme("label_smoothing:ls_sigma=0.3").loss(s, targets)[0]
    expected = -(0.7 * torch.log_softmax(s, 1)[torch.arange(4), [1, 2, 3, 4]] + 0.3 * torch.log_softmax(s, 1).mean(1))
    assert torch.allclose(ls, expected.mean())
    pl = build_scheme("pseudo_label:pl_topk=2")
    tg = pl.targets(targets, t)
    assert torch.equal(tg.sum(1) >= 2, torch.ones(4, dtype=torch.bool)) and (tg[targets > 0] == 1).all()
    assert (tg.gather(1, t.topk(2, 1).indices) == 1).all()


@pytest.mark.parametrize("labels", [[3], [3, 7, 9]])
def test_dkd_decomposes_kd(labels):
    """DKD's decomposition of KD, with the labelled set merged into one target."""
    s, t = _logits(b=1)
    targets = torch.zeros(1, 30)
    targets[0, labels] = 1
    cfg = SchemeConfig(dkd_alpha=1.0, dkd_beta=1.0, dkd_tau=1.0)
    _, parts = build_scheme("dkd", cfg).extra(s, targets, t, None, None)
    kd = torch.nn.functional.kl_div(torch.log_softmax(s, 1), torch.log_softmax(t, 1), log_target=True,
                                    reduction="sum")
    b_t = torch.softmax(t, 1)[0, labels].sum()
    # the chain rule of KL over {labelled set, rest}: KD = TCKD + b_T KL_within_labels + (1 - b_T) NCKD;
    # the merged DKD keeps TCKD and NCKD (with one label the middle term is 0)
    lt, ls = torch.log_softmax(t[:, labels], 1), torch.log_softmax(s[:, labels], 1)
    within = (lt.exp() * (lt - ls)).sum()
    assert torch.allclose(parts["tckd"] + b_t * within + (1 - b_t) * parts["nckd"], kd, atol=1e-6)
    s.requires_grad_(True)
    loss, _ = build_scheme("dkd").extra(s, targets, t, None, None)
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_ctkd_temperature_is_adversarial():
    s, t = _logits()
    targets = torch.zeros(4, 30)
    targets[:, 0] = 1
    sch = build_scheme("ctkd")
    sch.start_epoch(0, 4)
    assert sch.lam == 0.0
    sch.start_epoch(4, 4)
    assert sch.lam == pytest.approx(1.0)
    sch.start_epoch(2, 4)
    loss, parts = sch.loss(s, targets, t)
    loss.backward()
    tau = sch.temperature().detach()
    assert 1.0 < float(tau) < 5.0
    # the reversed gradient: theta's gradient has the opposite sign of d(KD)/d(theta), scaled by lambda
    theta = sch.theta.detach().clone().requires_grad_(True)
    tau2 = 1.0 + 4.0 * torch.sigmoid(theta)
    lt, ls = torch.log_softmax(t / tau2, 1), torch.log_softmax(s / tau2, 1)
    kd = (lt.exp() * (lt - ls)).sum(1).mean() * tau2.squeeze() ** 2
    (g,) = torch.autograd.grad(kd, theta)
    assert torch.allclose(sch.theta.grad, -sch.lam * g, atol=1e-6)
    state = sch.state_dict()
    other = build_scheme("ctkd")
    other.load_state_dict(state)
    assert other.lam == sch.lam and torch.equal(other.theta, sch.theta)


def test_radi_schemes_call_the_losses():
    s, t = _logits(n=40)
    mc = t[:, None] + 0.1 * torch.randn(4, 5, 40)
    targets = torch.zeros(4, 40)
    targets[:, 0] = 1
    gen = torch.Generator().manual_seed(0)
    for spec in ("radi_p:top_k=20", "radi_l:hot=10:cold=5", "kd"):
        sch = build_scheme(spec)
        loss, parts = sch.loss(s.clone().requires_grad_(True), targets, t, mc, gen)
        assert torch.isfinite(loss) and "cls" in parts
    p = build_scheme("radi_p:alpha=0")
    assert torch.allclose(p.loss(s, targets, t, mc)[0], build_scheme("baseline").loss(s, targets)[0])


def _mc_problem(b=4, n=40, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(b, n, generator=g)
    mc = teacher[:, None] + torch.rand(b, 1, n, generator=g) * torch.randn(b, t, n, generator=g)
    return torch.randn(b, n, generator=g), teacher, mc


def test_radi_p_lam_scale_multiplies_each_samples_auto_lam():
    """lam_scale x auto: per sample, lam = lam_scale x the mean off-diagonal U over its top-k answers."""
    from radi_fast.pairwise import pairwise_uncertainty, radi_pairwise_loss
    s, t, mc = _mc_problem()
    targets = torch.zeros(4, 40)
    k, scale = 15, 0.3
    sch = build_scheme(f"radi_p:lam_scale={scale}:top_k={k}:margin=10:alpha=1:sinkhorn=plain")
    rank, parts = sch.extra(s, targets, t, mc, None)
    expected = []
    for b in range(4):
        top = t[b].topk(k).indices
        U = pairwise_uncertainty(mc[b:b + 1, :, top])[0]
        lam = float(U.sum() / (k * (k - 1))) * scale  # the mean off-diagonal U (its diagonal is 0)
        expected.append(radi_pairwise_loss(s[b:b + 1], mc[b:b + 1], t[b:b + 1], margin=10, lam=lam, top_k=k,
                                           sinkhorn="plain"))
    assert torch.allclose(rank, torch.stack(expected).mean(), rtol=1e-5, atol=1e-6)
    assert parts["sinkhorn_iterations"] > 0
    # lam_scale 1 is the library's own "auto" (the default path); a scale changes the margins
    auto = build_scheme(f"radi_p:top_k={k}:margin=10:alpha=1:sinkhorn=plain").extra(s, targets, t, mc, None)[0]
    one = build_scheme(f"radi_p:top_k={k}:margin=10:alpha=1:sinkhorn=plain")
    one.cfg.lam_scale = 1.0
    assert torch.allclose(one._scaled_auto_lam(s, mc, t)[0], auto, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(rank, auto)
    # gradients reach the student through the per-sample calls
    x = s.clone().requires_grad_(True)
    sch.extra(x, targets, t, mc, None)[0].backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # an explicit lam is multiplied too; the default lam_scale changes nothing
    a = build_scheme("radi_p:lam=2:lam_scale=0.25:top_k=15").extra(s, targets, t, mc, None)[0]
    assert torch.equal(a, build_scheme("radi_p:lam=0.5:top_k=15").extra(s, targets, t, mc, None)[0])
    assert SchemeConfig().lam_scale == 1.0
    with pytest.raises(ValueError, match="lam_scale"):
        build_scheme("radi_p:lam_scale=0")


@pytest.mark.parametrize("radi", ["radi_p", "radi_l"])
def test_kd_plus_radi_is_the_sum_of_its_parts(radi):
    s, t, mc = _mc_problem()
    targets = torch.zeros(4, 40)
    targets[:, 0] = 1
    opts = ":top_k=20" if radi == "radi_p" else ":hot=10:cold=5"
    both = build_scheme(f"kd_{radi}:kd_alpha=0.5:{radi}_alpha=2{opts}")
    assert both.needs_teacher and both.mc_samples == (10 if radi == "radi_p" else 0)
    loss, parts = both.loss(s, targets, t, mc, torch.Generator().manual_seed(3))
    kd = build_scheme("kd:kd_alpha=0.5").loss(s, targets, t)[0]
    rk = build_scheme(f"{radi}:alpha=2{opts}").loss(s, targets, t, mc, torch.Generator().manual_seed(3))[0]
    base = build_scheme("baseline").loss(s, targets)[0]
    assert torch.allclose(loss, kd + rk - base, atol=1e-5)
    assert {"cls", "kd", "rank"} <= set(parts)
    only_kd = build_scheme(f"kd_{radi}:{radi}_alpha=0{opts}").loss(s, targets, t, mc)[0]
    assert torch.allclose(only_kd, build_scheme("kd").loss(s, targets, t)[0])


def test_train_labels_and_individual_epochs_end_to_end(tmp_path):
    from radi_fast.checkpoint import stage_fingerprint
    cfg = tiny(tmp_path, train_labels="top2", teacher_epochs=2, individual_epochs=1,
               schemes="kd_radi_p,kd_radi_l,radi_p:lam_scale=0.3")
    results = T.run(cfg)
    assert len(results["stages"]["teacher"]["history"]) == 2 and len(results["stages"]["individual"]["history"]) == 1
    assert set(results["schemes"]) == {"kd_radi_p", "kd_radi_l", "radi_p:lam_scale=0.3"}
    assert "optim.individual_epochs" not in stage_fingerprint(Config())  # earlier checkpoints still match
    assert stage_fingerprint(cfg)["optim.individual_epochs"] == 1
