"""Experiment configs are a package (issue 21): they import each other as ``experiments.m4m.finetune`` (nothing
under experiments/ or m4mjax/ loads a config by file path), --config=FILE imports a file of that package as its
module (one module object however it is reached; a file in no package is still loaded by ml_collections), and
the config.json a function-alignment run writes holds the values it trained with (LoRA rank/alpha of the kind,
the target row length), checked against hand-written numbers."""
from __future__ import annotations

import re
import sys

import pytest
from absl import flags

from m4m_fixtures import REPO, tiny_config
from m4mjax.run import cli

BY_PATH = re.compile(r"spec_from_file_location|load_source|SourceFileLoader|runpy|exec_module|\bimp\.load")


@pytest.mark.parametrize("path", sorted(p for pkg in ("experiments", "m4mjax") for p in (REPO / pkg).rglob("*.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_loads_a_config_by_path(path):
    hits = [ln.strip() for ln in path.read_text().splitlines() if BY_PATH.search(ln)]
    assert not hits, f"{path.relative_to(REPO)}: {hits}"


def test_config_module_name(monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.config_module_name("experiments/m4m/analysis.py") == "experiments.m4m.analysis"
    assert cli.config_module_name(str(REPO / "experiments/symmetry/../m4m/generation.py")) == "experiments.m4m.generation"
    for not_one in ("README.md", "experiments/m4m", "experiments/m4m/nope.py", "experiments/__init__.py.bak", ""):
        assert cli.config_module_name(not_one) is None, not_one


def _parse(argv: list[str]):
    """``argv`` parsed by a fresh flag registry holding only --config (cli.define_config_flag)."""
    fv = flags.FlagValues()
    cli.define_config_flag("config", flag_values=fv, sys_argv=argv)
    fv(argv)
    return fv.config


@pytest.mark.parametrize("spelling", ["experiments/m4m/analysis.py", "./experiments/m4m/analysis.py",
                                      "{repo}/experiments/symmetry/../m4m/analysis.py"])
def test_config_flag_imports_the_package_module(spelling, monkeypatch, tmp_path):
    """Every spelling of the path, from the repository or from elsewhere, runs experiments.m4m.analysis's own
    get_config (patched here: a by-path load would run a fresh copy of the file instead), with overrides."""
    from experiments.m4m import analysis

    calls = []
    real = analysis.get_config
    monkeypatch.setattr(analysis, "get_config", lambda *a: calls.append(a) or real(*a))
    for cwd in (REPO, tmp_path):
        if cwd is tmp_path and not spelling.startswith("{repo}"):
            continue
        monkeypatch.chdir(cwd)
        cfg = _parse(["prog", f"--config={spelling.format(repo=REPO)}:tiny", "--config.link.kind=fa_cross"])
        assert calls.pop() == ("tiny",) and not calls
        assert cfg.link.kind == "fa_cross" and cfg.task == "analysis" and cfg.is_locked
        with pytest.raises(AttributeError):  # locked: a new key is a typo
            cfg.link.lora_rnk = 3
    assert sys.modules["experiments.m4m.analysis"] is analysis


def test_config_flag_loads_a_file_outside_packages_by_path(tmp_path):
    (tmp_path / "my_config.py").write_text(
        "import ml_collections\n\ndef get_config(arg='a'):\n    return ml_collections.ConfigDict(dict(arg=arg, x=1))\n")
    assert cli.config_module_name(str(tmp_path / "my_config.py")) is None
    cfg = _parse(["prog", f"--config={tmp_path}/my_config.py:b", "--config.x=2"])
    assert (cfg.arg, cfg.x) == ("b", 2)


def test_sweep_and_flag_reach_the_same_module(monkeypatch):
    monkeypatch.chdir(REPO)
    from experiments import sweep
    from experiments.m4m import analysis, finetune, generation

    assert sweep.load_experiment("experiments/m4m/analysis.py") is analysis
    assert sweep.load_experiment(str(REPO / "experiments/m4m/generation.py")) is generation
    assert analysis.finetune is finetune and generation.finetune is finetune
    with pytest.raises(cli.UserError, match="importable package"):
        sweep.load_experiment(str(REPO / "README.md"))


def test_variants_are_checked_in_one_place():
    from experiments.m4m import analysis, generation

    for get, arg, where in ((analysis.get_config, "bogus", "analysis.py:bogus"),
                            (generation.get_config, "melody_to_chord,bogus", "generation.py:melody_to_chord,bogus")):
        with pytest.raises(cli.UserError, match=r"'bogus' .*tiny \| small \| paper") as e:
            get(arg)
        assert e.value.where == where
    assert generation.parse_arg("paper,drums_to_others") == ("drums_to_others", "paper")


def test_config_json_records_what_was_trained(prepared_dir):
    """What train() writes to config.json is tasks.resolved(cfg) (its first line; test_analysis checks a trained
    run's config.json against its saved lora_b shapes): for generation.py:drums_to_others,tiny with LoRA rank/alpha
    left to the kind (0), fa_cross records 16/32 and, with the rank set to 8, fa_self alpha 16 (official ratio
    128/64); the target rows 33 tokens (tiny's model.max_frame_tokens, what the pipeline reads for a 0)."""
    from m4mjax import tasks

    for kind, rank, want in (("fa_cross", 0, (16, 32.0)), ("fa_self", 8, (8, 16.0))):
        cfg = tiny_config(prepared_dir, "generation", "drums_to_others,tiny",
                          **{"link.kind": kind, "link.lora_rank": rank, "link.lora_alpha": 0.0, "init_from": ""})
        saved = tasks.resolved(cfg).to_dict()
        assert (saved["link"]["lora_rank"], saved["link"]["lora_alpha"]) == want
        assert saved["data"]["target_frame_tokens"] == 33 and saved["data"]["max_frame_tokens"] == 33
        assert (saved["link"]["kind"], saved["task"]) == (kind, "drums_to_others")


def test_analysis_cpu_scratch_is_small_plus_its_listed_deviations():
    """analysis.py:cpu_scratch = :small with exactly the CPU_SCRATCH keys changed (the recipe the session-13 probe
    trained: width 128, 2 layers, from scratch, target_sounding, mask 0.5 x 16 frames, chord/open weights 3)."""
    from experiments.m4m import analysis

    small, cpu = analysis.get_config("small").to_dict(), analysis.get_config("cpu_scratch").to_dict()

    def flat(d, pre=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{pre}{k}.") if isinstance(v, dict) else {f"{pre}{k}": v})
        return out

    a, b = flat(small), flat(cpu)
    assert {k for k in a if a[k] != b[k]} == {k for k in analysis.CPU_SCRATCH if a[k] != analysis.CPU_SCRATCH[k]}
    assert (b["model.width"], b["model.layers"], b["init_from"], b["link.train"]) == (128, 2, "", "full")
    assert b["link.target_sounding"] is True and (b["link.mask_prob"], b["link.mask_length"]) == (0.5, 16)
    assert (b["link.loss_weights.chord"], b["link.loss_weights.open"], b["optim.schedule"]) == (3.0, 3.0,
                                                                                             "warmup_constant")
    assert (tuple(b["link.sounding_ahead"]), b["optim.decay_steps"]) == ((4, 16), 500)  # session 15's two levers
    assert (a["data.song_start_frac"], b["data.song_start_frac"]) == (0.0, 0.25)  # session 17's; off = official
    # its seq2seq row is built at the recipe's own sizes (the scratch row's model), not the official 256 x 3 layers
    assert {k: b[f"model.{k}"] for k in cpu["link"]["seq2seq"]} == cpu["link"]["seq2seq"]


def test_analysis_cpu_rows_start_from_a_foundation_of_their_own_shape():
    """analysis.py:cpu (FA_self, the link trained) and cpu_scratch differ only in the scratch row's two keys, and
    lm_pretrain.py:cpu builds exactly the model they fine-tune (every model key equal), so
    --config.init_from=pretrained/lm_cpu loads."""
    from experiments.m4m import analysis, lm_pretrain

    fa, scratch = analysis.get_config("cpu").to_dict(), analysis.get_config("cpu_scratch").to_dict()
    assert (fa["init_from"], fa["link"]["train"], fa["link"]["kind"]) == ("pretrained/lm_cpu", "link", "fa_self")
    assert (scratch["init_from"], scratch["link"]["train"]) == ("", "full")
    assert {k: v for k, v in fa.items() if k not in ("init_from", "link")} == \
        {k: v for k, v in scratch.items() if k not in ("init_from", "link")}
    assert {k: v for k, v in fa["link"].items() if k != "train"} == \
        {k: v for k, v in scratch["link"].items() if k != "train"}
    foundation = lm_pretrain.get_config("cpu").model.to_dict()
    assert foundation == fa["model"]
    assert (foundation["width"], foundation["layers"], foundation["ffn"], foundation["norm"]) == (128, 2, 512, "pre")
