"""The trainer as users meet it: bad settings fail fast, a run is never lost or overwritten, the
log, the metadata of results.json, the curves, ``--model`` / ``--data`` plug-ins, ``--version``."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from radi_fast import plot
from radi_fast import train as T
from radi_fast._settings import allowed, numeric_fields_without_rule
from radi_fast.config import Config, config_from_dict, flag_fields
from radi_fast.plugins import load_factory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "custom_model_and_data.py")
TINY = {"n_train": 64, "n_val": 32, "n_test": 32, "n_answers": 120, "d_model": 16, "n_layers": 2, "n_heads": 2,
        "batch_size": 32, "teacher_epochs": 1, "student_epochs": 1, "mc_samples": 3, "hot": 10, "cold": 5,
        "top_k": 20, "progress": False, "curves": False}


def tiny(out_dir, **kw):
    return config_from_dict({**TINY, "out_dir": str(out_dir), **kw})


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def _snapshot(folder):
    """Every file under ``folder`` with its bytes (to show that nothing was touched)."""
    out = {}
    for d, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(d, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = f.read()
    return out


# ------------------------------------------------------------------ every bad setting fails before any work
def _bad_values():
    """``(flag, bad value, what the message must say)`` for every enum flag and every bound of
    every numeric flag, read from the fields' own rules."""
    cases = []
    for section, f in flag_fields():
        m = f.metadata
        if "choices" in m:
            cases.append((f.name, "bogus", m["choices"][0]))
        default = getattr(getattr(Config(), section), f.name)
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        step = 1 if isinstance(default, int) else 0.5
        for key, value in (("min", m.get("min")), ("gt", m.get("gt")), ("max", m.get("max")), ("lt", m.get("lt"))):
            if value is None:
                continue
            bad = {"min": value - step, "gt": value, "max": value + step, "lt": value}[key]
            cases.append((f.name, str(type(default)(bad)), allowed(m)))
    return cases


# the failures the issue lists, each by name
ISSUE_CASES = [
    (["--margin_mode", "bogus"], "--margin_mode", "uncertainty"),
    (["--sampling", "bogus"], "--sampling", "zipf"),
    (["--list_loss", "bogus"], "--list_loss", "ndcg_loss2pp"),
    (["--lam", "abc"], "--lam", "'auto' or a positive number"),
    (["--lam", "-1"], "--lam", "'auto' or a positive number"),
    (["--margin", "-1"], "--margin", ">= 0"),
    (["--n_train", "0"], "--n_train", ">= 1"),
    (["--n_val", "0"], "--n_val", ">= 1"),
    (["--n_test", "0"], "--n_test", ">= 1"),
    (["--save_every", "-1"], "--save_every", ">= 0"),
    (["--grad_clip", "-1"], "--grad_clip", ">= 0"),
    (["--halt_after_steps", "-1"], "--halt_after_steps", ">= 0"),
    (["--mc_samples", "0"], "--mc_samples", ">= 2"),
    (["--device", "bogus"], "--device", "auto, cpu, cuda or cuda:N"),
    (["--lr", "nan"], "--lr", "finite"),
    (["--schemes", "radi_p:margin_mode=bogus"], "margin_mode", "uncertainty"),
    (["--schemes", "baseline,radi_l:sampling=bogus"], "sampling", "zipf"),
    (["--schemes", "radi_l:list_loss=bogus"], "list_loss", "listmle"),
    (["--schemes", "radi_p:margin=-1"], "margin", ">= 0"),
    (["--schemes", "radi_p:lam=abc"], "lam", "'auto' or a positive number"),
    (["--schemes", "kd,nonsense"], "--schemes", "unknown scheme 'nonsense'"),
    (["--d_model", "10", "--n_heads", "4"], "--d_model", "divisible"),
    (["--cluster_min", "5", "--cluster_max", "3"], "--cluster_min", "<="),
    (["--num_frames", "3"], "--num_frames", ">= 6"),
    (["--dataset", "ivqa"], "--dataset ivqa", "--data_dir"),
    (["--resume", "--overwrite"], "--resume", "--overwrite"),
    (["--model", "no_such_module_xyz:make"], "--model", "cannot import"),
    (["--data", "radi_fast.data:nothing_here"], "--data", "no callable"),
]
if not torch.cuda.is_available():
    ISSUE_CASES.append((["--device", "cuda"], "--device cuda", "CUDA is not available"))


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a stage was trained")
    monkeypatch.setattr(T, "train_stage", refuse)
    monkeypatch.setattr(T, "load_data", lambda cfg: (_ for _ in ()).throw(AssertionError("data was loaded")))


def _fails_fast(argv, tmp_path, capsys, *needles):
    out_dir = tmp_path / "run"
    t0 = time.time()
    code = T.main(argv + ["--out_dir", str(out_dir)])
    seconds = time.time() - t0
    err = capsys.readouterr().err
    assert code == 2, err
    assert seconds < 3, seconds
    assert not out_dir.exists()  # nothing written
    assert "[teacher]" not in err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize("argv,flag,allowed", ISSUE_CASES, ids=[" ".join(c[0]) for c in ISSUE_CASES])
def test_the_issues_bad_settings_fail_fast(argv, flag, allowed, tmp_path, capsys, no_training):
    _fails_fast(argv, tmp_path, capsys, flag, allowed)


@pytest.mark.parametrize("name,value,allowed", _bad_values(), ids=[f"{n}={v}" for n, v, _ in _bad_values()])
def test_every_flag_out_of_range_fails_fast(name, value, allowed, tmp_path, capsys, no_training):
    """Every enum flag with a bad value and every numeric flag past each of its bounds: exit code
    2 in well under a few seconds, naming the flag and what it allows, nothing trained or written."""
    _fails_fast([f"--{name}", value], tmp_path, capsys, f"--{name}", allowed)


@pytest.mark.parametrize("name,value,allowed", [c for c in _bad_values() if c[1] == "bogus"],
                         ids=[c[0] for c in _bad_values() if c[1] == "bogus"])
def test_bad_enum_values_in_a_config_file_fail_fast(name, value, allowed, tmp_path, capsys, no_training):
    """argparse's choices guard the flags; check_config guards the same settings in --config files."""
    _fails_fast(["--config", _write(tmp_path / "c.json", {name: value})], tmp_path, capsys, f"--{name}", allowed)


def test_every_numeric_setting_declares_its_range():
    for section in dataclasses.fields(Config):
        assert numeric_fields_without_rule(section.default_factory) == [], section.name


@pytest.mark.parametrize("content,needle", [("[1, 2]", "JSON object"), ('"lr"', "JSON object"),
                                            ("{", "not valid JSON"), ('{"lr": "fast"}', "'lr' must be float"),
                                            ('{"bogus": 1}', "unknown setting 'bogus'")])
def test_bad_config_files_fail_cleanly(content, needle, tmp_path, capsys, no_training):
    (tmp_path / "c.json").write_text(content)
    _fails_fast(["--config", str(tmp_path / "c.json")], tmp_path, capsys, needle)


def test_argparse_errors_are_short_and_exit_2(capsys):
    assert T.main(["--n_train", "abc"]) == 2
    err = capsys.readouterr().err
    assert "argument --n_train: invalid int value: 'abc'" in err and len(err.splitlines()) == 2


def test_help_shows_choices_ranges_and_version(capsys):
    assert T.main(["--help"]) == 0
    out = capsys.readouterr().out
    for text in ("{ot,uniform,random,uncertainty}", "{zipf,exp,random,full}", "{fp32,bf16}",
                 "{individual,teacher,scratch}", ">= 2", "--overwrite", "--model", "--data", "--no-progress"):
        assert text in out, text
    assert T.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("radi_fast 0.1.0 (torch ")


def test_the_command_line_exits_2_on_a_bad_setting(tmp_path):
    done = subprocess.run([sys.executable, "-m", "radi_fast.train", "--margin_mode", "bogus", "--out_dir",
                           str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "invalid choice: 'bogus'" in done.stderr
    assert not (tmp_path / "run").exists()


def test_console_script():
    exe = shutil.which("radi-fast-train", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("radi-fast-train is not installed here (pip install -e .)")
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("radi_fast ")
    done = subprocess.run([exe, "--n_train", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--n_train must be >= 1, got 0" in done.stderr


# ------------------------------------------------------------------ never lose a run
def test_a_used_out_dir_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    T.run(tiny(tmp_path, schemes="kd"))
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert T.main(["--config", _write(tmp_path.parent / "c.json", {**TINY, "out_dir": str(tmp_path)}),
                   "--schemes", "baseline"]) == 2
    err = capsys.readouterr().err
    assert f"--out_dir {tmp_path} already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(tmp_path) == before  # nothing touched

    (tmp_path / "notes.txt").write_text("mine")
    results = T.run(tiny(tmp_path, schemes="baseline", overwrite=True))
    assert "--overwrite: deleted the earlier run's 6 file(s)" in capsys.readouterr().err  # 3 + 3 checkpoints
    assert set(results["schemes"]) == {"baseline"}
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "individual.pt", "student-baseline.pt", "teacher.pt"]  # the old run's kd student is gone
    assert (tmp_path / "notes.txt").read_text() == "mine"  # not the run's: left alone
    assert json.loads((tmp_path / "config.json").read_text())["run"]["schemes"] == "baseline"


def test_a_refused_resume_writes_nothing(tmp_path, capsys, monkeypatch):
    T.run(tiny(tmp_path, schemes="baseline"))
    before = _snapshot(tmp_path)
    capsys.readouterr()
    calls = []
    monkeypatch.setattr(T, "train_stage", lambda *a, **k: calls.append(a))
    assert T.main(["--config", _write(tmp_path.parent / "c.json", {**TINY, "out_dir": str(tmp_path)}),
                   "--schemes", "baseline", "--resume", "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "run.seed: 0 -> 5" in err
    assert calls == [] and _snapshot(tmp_path) == before  # config.json still says seed 0


def test_results_accumulate_over_resumes(tmp_path):
    first = T.run(tiny(tmp_path, schemes="baseline,radi_p"))
    again = T.run(tiny(tmp_path, schemes="radi_p", resume=True))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved["schemes"]) == ["baseline", "radi_p"] == list(again["schemes"])
    assert saved["schemes"]["baseline"]["test"] == first["schemes"]["baseline"]["test"]
    assert saved["schemes"]["radi_p"]["test"] == first["schemes"]["radi_p"]["test"]  # reused, same numbers
    assert saved["config"]["run"]["schemes"] == "baseline,radi_p"
    assert json.loads((tmp_path / "config.json").read_text())["run"]["schemes"] == "baseline,radi_p"
    T.run(tiny(tmp_path, schemes="kd", resume=True))
    assert list(json.loads((tmp_path / "results.json").read_text())["schemes"]) == ["baseline", "radi_p", "kd"]


def test_out_dir_that_is_a_file_is_refused(tmp_path, capsys, no_training):
    (tmp_path / "f").write_text("x")
    assert T.main(["--out_dir", str(tmp_path / "f")]) == 2
    assert "is a file" in capsys.readouterr().err


# ------------------------------------------------------------------ log, metadata, curves
def test_log_file_progress_and_metadata(tmp_path, capsys):
    T.run(tiny(tmp_path, schemes="baseline"))
    err = capsys.readouterr().err
    assert "[teacher] epoch 1/1" in err and "it/s" not in err  # not a terminal: no bars, a line per epoch
    log = (tmp_path / "train.log").read_text()
    assert "INFO data: synthetic" in log and "[student-baseline] test Acc@1" in log
    results = json.loads((tmp_path / "results.json").read_text())
    env = results["environment"]
    assert env["radi_fast"] == "0.1.0" and env["torch"] == torch.__version__
    assert env["python"].count(".") == 2 and env["device"] == "cpu" and env["device_name"]
    assert "triton" in env and env["backend_info"]["extension"] == results["environment"]["backend_info"]["extension"]
    assert "sampler" in env["backend_info"]
    if os.path.exists(os.path.join(ROOT, ".git")) and shutil.which("git"):
        assert len(env["git"]["commit"]) == 40
    assert results["finished"] is True
    assert results["config"]["optim"]["lr"] == 2e-3  # resolved: lr auto filled in
    assert set(results["config"]) == {"data", "synthetic", "model", "optim", "scheme", "run"}

    T.run(tiny(tmp_path / "bars", schemes="baseline", progress=True))
    assert "it/s]" in capsys.readouterr().err  # --progress: tqdm bars


def test_halt_and_errors_go_to_the_log(tmp_path, capsys):
    with pytest.raises(T.Halted):
        T.run(tiny(tmp_path, schemes="baseline", halt_after_steps=1))
    assert "halted after 1 steps" in (tmp_path / "train.log").read_text()
    results = json.loads((tmp_path / "results.json").read_text()) if (tmp_path / "results.json").exists() else None
    assert results is None or results["finished"] is False


def test_curves_after_every_stage_and_the_plot_command(tmp_path, monkeypatch):
    calls = []
    real = plot.draw
    monkeypatch.setattr(plot, "draw", lambda runs, path, title=None: (calls.append(len(runs[0][1]["schemes"])),
                                                                      real(runs, path, title)))
    T.run(tiny(tmp_path / "a", schemes="baseline,kd", curves=True))
    assert calls == [0, 0, 1, 2]  # teacher, individual, each student
    png = (tmp_path / "a" / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10000
    T.run(tiny(tmp_path / "b", schemes="baseline", curves=True, seed=1))
    assert plot.main([str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "both.png")]) == 0
    assert (tmp_path / "both.png").read_bytes().startswith(b"\x89PNG")
    os.remove(tmp_path / "a" / "curves.png")
    assert plot.main([str(tmp_path / "a")]) == 0 and (tmp_path / "a" / "curves.png").exists()  # redrawn
    assert plot.main([str(tmp_path / "nothing")]) == 2
    curves = plot.stage_curves(json.loads((tmp_path / "a" / "results.json").read_text()))
    assert [(label, xs) for label, xs, _ in curves] == [
        ("teacher", [1]), ("individual", [1]), ("student baseline", [2]), ("student kd", [2])]


# ------------------------------------------------------------------ your own model and data
def test_the_example_plug_ins_train_end_to_end(tmp_path, capsys):
    argv = ["--data", f"{EXAMPLE}:make_data", "--model", f"{EXAMPLE}:make_model", "--schemes", "baseline,kd,radi_p",
            "--n_train", "64", "--n_val", "32", "--n_test", "32", "--teacher_epochs", "1", "--student_epochs", "1",
            "--batch_size", "32", "--mc_samples", "3", "--top_k", "8", "--no-progress", "--no-curves",
            "--out_dir", str(tmp_path / "run")]
    assert T.main(argv) == 0
    assert "data: --data " in capsys.readouterr().err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["schemes"]) == {"baseline", "kd", "radi_p"}
    assert results["config"]["optim"]["lr"] == 5e-5 and results["config"]["model"]["model"].endswith(":make_model")
    ck = torch.load(tmp_path / "run" / "checkpoints" / "student-radi_p.pt", weights_only=True)
    assert "last_layer.1.weight" in ck["model"] and ck["model"]["last_layer.1.weight"].shape[0] == 12
    # the example's own entry point runs the same trainer
    spec = __import__("importlib.util").util.spec_from_file_location("example", EXAMPLE)
    module = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--n_train", "64", "--n_val", "32", "--n_test", "32", "--teacher_epochs", "1",
                        "--student_epochs", "1", "--no-curves", "--no-progress", "--out_dir",
                        str(tmp_path / "own")]) == 0


def test_plug_in_specs(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text("def build(data, cfg):\n    return 42\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert load_factory("mypkg.models:build", "--model")(None, None) == 42  # the current folder is searched
    assert load_factory(str(pkg / "models.py") + ":build", "--model")(None, None) == 42
    for spec, msg in [("mypkg.models", "must be package.module:factory"), ("mypkg.nope:build", "cannot import"),
                      ("mypkg.models:other", "no callable 'other'"), ("missing.py:f", "file not found")]:
        with pytest.raises(ValueError, match=msg):
            load_factory(spec, "--model")
    cfg = tiny(tmp_path / "run", model="mypkg.models:build", schemes="baseline")
    with pytest.raises(ValueError, match="--model mypkg.models:build returned int; it must return a"):
        T.run(cfg)
    assert not (tmp_path / "run").exists()  # found before anything is written
