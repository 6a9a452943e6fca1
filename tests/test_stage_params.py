"""One definition of each stage's parameters (pipeline.params): the Admin forms offer exactly the
model's limits and defaults, the stages refuse what the model refuses with its message, the
command line takes its defaults from it, and the Retrain list is backend.chain's alone."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from backend.chain import DPO_STEPS, RETRAIN_ORDER, RETRAIN_REQUIRED, retrain_steps
from backend.stages import STAGE_MODULES, stage_module
from pipeline.params import PARAMS, DpoParams, PrepareParams, QuantizeParams, ServeParams, TrainParams, parse
from pipeline.stage import StageError
from tests.conftest import ROOT
from tests.test_admin_page import admin_env, login, open_page, page  # noqa: F401 - admin_env is a fixture

# (stage shown in Run a stage, widget key, model, field): form fields whose limits are the model's
FORM_FIELDS = [
    ("train", "train_lr", TrainParams, "lr"),
    ("train", "train_maxlen", TrainParams, "max_length"),
    ("train", "train_bs", TrainParams, "batch_size"),
    ("train", "train_acc", TrainParams, "accumulative_counts"),
    ("train", "train_epochs", TrainParams, "max_epochs"),
    ("train", "train_iters", TrainParams, "max_iters"),
    ("train", "train_r", TrainParams, "lora_r"),
    ("train", "train_alpha", TrainParams, "lora_alpha"),
    ("dpo", "dpo_lr", DpoParams, "lr"),
    ("dpo", "dpo_iters", DpoParams, "max_iters"),
    ("prepare", "prep_val", PrepareParams, "val"),
    ("prepare", "prep_test", PrepareParams, "test"),
    ("prepare", "prep_seed", PrepareParams, "seed"),
    ("quantize", "quant_samples", QuantizeParams, "calib_samples"),
    ("serve", "serve_tp", ServeParams, "tp"),
    ("serve", "serve_port", ServeParams, "port"),
]


def test_every_stage_has_a_parameter_model_matching_its_command():
    assert set(PARAMS) == set(STAGE_MODULES)
    for kind, model in PARAMS.items():
        sig = inspect.signature(stage_module(kind).command)
        named = [n for n, p in sig.parameters.items() if n != "settings" and p.kind is not p.VAR_KEYWORD]
        assert set(named) <= set(model.model_fields), (kind, set(named) - set(model.model_fields))
        for n in named:  # an explicit default in command() is the model's
            assert sig.parameters[n].default == model.default(n), (kind, n)


def test_the_forms_offer_the_models_limits_and_defaults(admin_env, monkeypatch, train_python):
    from pipeline import train

    monkeypatch.setattr(train, "visible_gpus", lambda: 64)  # so the serve form's tp is the model's too
    at = open_page(login(page()), "run")
    checked = 0
    for kind in dict.fromkeys(k for k, *_ in FORM_FIELDS):
        at.selectbox(key="stage_kind").set_value(kind).run()
        assert not at.exception, at.exception
        for _, key, model, name in (f for f in FORM_FIELDS if f[0] == kind):
            box, lim = at.number_input(key=key), model.limits(name)
            assert box.max == lim.get("le", lim.get("lt")), (key, box.max, lim)
            assert box.min == lim.get("ge", lim.get("gt")), (key, box.min, lim)
            assert box.value == model.default(name), (key, box.value)
            checked += 1
    assert checked == len(FORM_FIELDS)


@pytest.mark.parametrize("model, name", [(m, n) for _, _, m, n in FORM_FIELDS])
def test_the_model_takes_its_limits_and_refuses_beyond(model, name):
    lim = model.limits(name)
    hi = lim.get("le")
    parse(model, {name: hi})
    whole = isinstance(hi, int)
    with pytest.raises(StageError, match=rf"^{name} must be a (whole )?number"):
        parse(model, {name: hi + 1 if whole else hi * 1.5})


def test_form_and_stage_share_one_learning_rate_limit():
    """Issue 11: the form allowed lr up to 0.5 while the stage took anything below 1.0."""
    assert TrainParams.limits("lr") == DpoParams.limits("lr") == {"ge": 1e-9, "le": 0.5}
    with pytest.raises(StageError, match="lr must be a number >= 1e-09 and <= 0.5, got 0.7"):
        parse(TrainParams, {"lr": 0.7})


def test_the_command_line_defaults_are_the_models():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.prepare_data", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for name in ("val", "test", "seed"):
        assert f"{PrepareParams.help(name)} (default {PrepareParams.default(name)})" in " ".join(out.split())


def test_the_retrain_list_is_the_chains_order():
    assert [k for k, _ in retrain_steps({"prepare": {}, "train": {}, "evaluate": {}})] == list(RETRAIN_REQUIRED)
    every = {k: {} for k in RETRAIN_ORDER if k != "dpo"}
    kinds = [k for k, _ in retrain_steps(every, dpo={})]
    i = RETRAIN_ORDER.index("dpo")
    assert kinds == [*RETRAIN_ORDER[:i], *DPO_STEPS, *RETRAIN_ORDER[i + 1 :]]
    with pytest.raises(StageError, match="not Retrain steps"):
        retrain_steps({"serve": {}})


def test_retrain_from_the_page_follows_the_chains_order(admin_env, monkeypatch, tiny_model, train_python):
    from backend.chain import cancel_chain, list_chains

    monkeypatch.setenv("RECIPE_BASE_MODEL", str(tiny_model))
    at = open_page(login(page()), "retrain")
    assert " → ".join(RETRAIN_ORDER) in " ".join(c.value for c in at.caption)
    at.number_input(key="rt_train_iters").set_value(100_000)
    [b for b in at.button if b.label.startswith("Start Retrain")][0].click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    (ch,) = list_chains(admin_env)
    cancel_chain(admin_env, ch.id)
    assert [s["kind"] for s in ch.steps] == list(RETRAIN_REQUIRED)


def test_a_bad_later_step_stops_the_chain_before_it_starts(settings):
    from backend.chain import list_chains, start_chain

    with pytest.raises(StageError, match=r"step 2 of 2 \(train\): lr must be a number"):
        start_chain(settings, [("prepare", {}), ("train", {"lr": 3})])
    assert list_chains(settings) == []
