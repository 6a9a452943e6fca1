"""What makes a folder a Hugging Face model that the engines, merge, quantise and evaluate can
load: one check, used by all of them, so that they agree."""

from __future__ import annotations

import os
from pathlib import Path

WEIGHTS = ("*.safetensors", "*.bin")


def model_folder_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a model folder (config.json and weight files), or None when it is."""
    p = Path(path).expanduser()
    if not p.exists():
        return f"{p} does not exist"
    if not p.is_dir():
        return f"{p} is not a folder"
    if not (p / "config.json").is_file():
        return f"{p} is not a model folder (no config.json)"
    if not any(next(p.glob(pattern), None) for pattern in WEIGHTS):
        return f"{p} has no weights (*.safetensors or *.bin): an unfinished copy or merge?"
    return None


# ---- the same model in every environment ------------------------------------------------------
# The app (transformers 5), train (4.48) and eval (4.57) environments each load model folders
# with their own transformers. A folder one of them reads differently (issue 13: a tokenizer
# saved by transformers 5 fails in 4.x with "Tokenizer class TokenizersBackend does not exist";
# a config whose rope_theta only transformers 5 understands loads in 4.x with the default 10000)
# trains one model and serves another. ``check_across_envs`` loads the folder in each installed
# environment, in a subprocess (``python -m core.model_folder probe``), and compares what each
# saw: config facts, special tokens, the ids of probe texts and of a chat prompt, and (for
# folders up to LOGITS_MAX_BYTES of weights) the logits of one forward pass on those ids.
# ``static_problem`` is the cheap part (file reads only) for places that cannot afford loading.

CHECK_FILE = ".recipe_envcheck.json"  # the last passing check, inside the folder
CHECK_FORMAT = "recipe-envcheck/1"
METADATA_FILES = {CHECK_FILE, "recipe_model.json"}  # not part of a folder's fingerprint
LOGITS_MAX_BYTES = 2 * 1024**3  # larger folders: config and tokenizer compared, no forward pass
LOGITS_ATOL = 1e-3  # max |difference| of float32 logits between environments
CONFIG_KEYS = (
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "rope_scaling",
)
PROBE_TEXTS = (
    "红烧肉的做法",
    "您需要准备以下食材:\n- 五花肉 500克\n按以下方法制作:\n1. 切块。",
    "Hello world 2024",
    "<|im_start|>user\nhi<|im_end|>\n",
)
PROBE_MESSAGES = ({"role": "system", "content": "你是一位中餐厨师。"}, {"role": "user", "content": "番茄炒蛋的做法"})
# what a tokenizer or config written by transformers 5 looks like to 4.x (see static_problem)
TF5_TOKENIZER_CLASSES = {"TokenizersBackend"}


def static_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` would load differently in the training/eval environments (transformers 4.x)
    than in the app (5.x), judged from its files alone; None when nothing is seen. Checks what
    issue 13 met: a tokenizer class only transformers 5 has, a config whose rope_theta 4.x would
    not read (it then silently uses 10000), a GGUF quantisation marker; and a failed recorded
    cross-environment check."""
    import json

    p = Path(path).expanduser()

    def read(name: str) -> dict:
        try:
            data = json.loads((p / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    tok = read("tokenizer_config.json")
    if str(tok.get("tokenizer_class") or "") in TF5_TOKENIZER_CLASSES:
        return (
            f"{p}: its tokenizer was saved by transformers 5 (tokenizer_class "
            f"{tok['tokenizer_class']!r}), which the training and evaluation environments "
            "(transformers 4.x) cannot load; save it with transformers 4.x"
        )
    cfg = read("config.json")
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in cfg:
        return (
            f"{p}: config.json keeps rope_theta ({rope['rope_theta']}) only in rope_parameters "
            "(transformers 5); transformers 4.x would silently use its default instead: save the "
            "config with transformers 4.x or add rope_theta"
        )
    quant = cfg.get("quantization_config")
    if isinstance(quant, dict) and str(quant.get("quant_method", "")).lower() == "gguf":
        return f"{p}: config.json still carries the GGUF quantisation marker (quantization_config)"
    rec = read(CHECK_FILE)
    if rec.get("format") == CHECK_FORMAT and rec.get("fingerprint") == fingerprint(p) and not rec.get("ok"):
        return f"{p}: loads differently across environments: {rec.get('problem')}"
    return None


def fingerprint(path: str | os.PathLike) -> str:
    """Names, sizes and modification times of the folder's files (not our metadata files)."""
    import hashlib

    p = Path(path)
    h = hashlib.sha1()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        rel = f.relative_to(p).as_posix()
        if rel in METADATA_FILES:
            continue
        st = f.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _weights_bytes(p: Path) -> int:
    return sum(f.stat().st_size for pattern in WEIGHTS for f in p.glob(pattern))


def _ids(value) -> list[int]:
    """Token ids from whatever apply_chat_template / __call__ returned in this transformers."""
    if hasattr(value, "keys") and "input_ids" in value.keys():
        value = value["input_ids"]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if value and isinstance(value[0], list):
        value = value[0]
    return [int(i) for i in value]


def probe(path: str, logits: bool = True, trust_remote_code: bool = True) -> dict:
    """What this environment's transformers makes of the folder (run in each environment)."""
    import hashlib

    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    facts = {k: getattr(cfg, k, None) for k in CONFIG_KEYS}
    scaling = facts["rope_scaling"]  # transformers 5 shows its rope_parameters here: plain RoPE = None
    if (
        isinstance(scaling, dict)
        and scaling.get("rope_type", "default") == "default"
        and set(scaling) <= {"rope_type", "rope_theta", "type"}
    ):
        facts["rope_scaling"] = None
    rope = getattr(cfg, "rope_theta", None)
    params = getattr(cfg, "rope_parameters", None)  # transformers 5
    if rope is None and isinstance(params, dict):
        rope = params.get("rope_theta")
    facts["rope_theta"] = rope
    facts["quantization_config"] = bool(getattr(cfg, "quantization_config", None))
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    facts["special_tokens"] = {
        k: [getattr(tok, k, None), getattr(tok, k + "_id", None)]
        for k in ("bos_token", "eos_token", "pad_token", "unk_token")
    }
    facts["texts"] = [_ids(tok(t, add_special_tokens=False)) for t in PROBE_TEXTS]
    facts["texts_special"] = [_ids(tok(t)) for t in PROBE_TEXTS]
    facts["decoded"] = [tok.decode(ids) for ids in facts["texts"]]
    template = getattr(tok, "chat_template", None)
    facts["chat_template_sha1"] = hashlib.sha1(template.encode()).hexdigest() if template else None
    chat = None
    if template:
        text = tok.apply_chat_template(list(PROBE_MESSAGES), tokenize=False, add_generation_prompt=True)
        chat = _ids(tok(text, add_special_tokens=False))
    facts["chat_ids"] = chat
    try:
        from transformers import GenerationConfig

        facts["generation_eos"] = GenerationConfig.from_pretrained(path).eos_token_id
    except (OSError, ValueError):
        facts["generation_eos"] = None
    out = {"transformers": transformers.__version__, "facts": facts, "logits": None}
    if logits:
        model = AutoModelForCausalLM.from_pretrained(
            path, torch_dtype=torch.float32, trust_remote_code=trust_remote_code
        )
        model.eval()
        ids = (chat or facts["texts"][0])[:64]
        with torch.no_grad():
            lg = model(torch.tensor([ids])).logits[0].float()
        out["logits"] = {"ids": ids, "last": lg[-1].tolist(), "argmax": lg.argmax(-1).tolist()}
    return out


def _jsonable(value):
    import json

    return json.loads(json.dumps(value, default=str))


def check_across_envs(
    path: str | os.PathLike,
    envs: tuple[str, ...] = ("app", "train", "eval"),
    logits: bool | None = None,
    timeout: float = 900.0,
    record: bool = True,
) -> dict:
    """Load ``path`` in each installed environment and compare. Returns a report::

        {ok, problem, envs: {name: transformers version | "not installed" | error}, rope_theta,
         logits_max_abs_diff, logits_checked, seconds}

    A passing report is written to the folder (CHECK_FILE) with its fingerprint and reused while
    the folder is unchanged (``record``); a failing one is written too, so that static_problem
    refuses the folder without loading it again."""
    import json
    import subprocess
    import time

    from core.envs import env_installed, env_python

    p = Path(path).expanduser().resolve()
    why = model_folder_problem(p)
    if why:
        return {"ok": False, "problem": why, "envs": {}}
    fp = fingerprint(p)
    try:
        old = json.loads((p / CHECK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    if (
        record
        and old.get("format") == CHECK_FORMAT
        and old.get("fingerprint") == fp
        and old.get("ok")
        and set(envs) <= set(old.get("envs", {}))
    ):
        return {**old, "cached": True}
    with_logits = _weights_bytes(p) <= LOGITS_MAX_BYTES if logits is None else logits
    start = time.monotonic()
    root = Path(__file__).resolve().parent.parent
    procs, seen = {}, set()
    for name in envs:
        py = env_python(name)
        if not env_installed(name) or str(py) in seen:
            continue
        seen.add(str(py))
        argv = [str(py), "-P", "-m", "core.model_folder", "probe", str(p)] + ([] if with_logits else ["--no-logits"])
        env = {
            **os.environ,
            "PYTHONPATH": str(root),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
        }
        procs[name] = subprocess.Popen(
            argv, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    results, report_envs, problems = {}, {}, []
    for name in envs:
        if name not in procs:
            report_envs[name] = "not installed"
            continue
        try:
            out, err = procs[name].communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            procs[name].kill()
            out, err = procs[name].communicate()
            problems.append(f"{name}: loading took longer than {timeout:.0f} s")
            report_envs[name] = "timeout"
            continue
        line = out.strip().splitlines()[-1] if out.strip() else ""
        try:
            res = json.loads(line)
        except ValueError:
            res = None
        if procs[name].returncode != 0 or not isinstance(res, dict):
            tail = (err.strip().splitlines() or ["no output"])[-1][:400]
            problems.append(f"{name} environment cannot load it: {tail}")
            report_envs[name] = f"failed: {tail}"
            continue
        results[name] = res
        report_envs[name] = res["transformers"]
    diff = None
    names = list(results)
    if len(names) >= 2:
        ref = names[0]
        a = results[ref]["facts"]
        for other in names[1:]:
            b = results[other]["facts"]
            for key in sorted(set(a) | set(b)):
                if _jsonable(a.get(key)) != _jsonable(b.get(key)):
                    problems.append(
                        f"{key} differs: {ref} (transformers {results[ref]['transformers']}) "
                        f"{str(a.get(key))[:160]} vs {other} (transformers "
                        f"{results[other]['transformers']}) {str(b.get(key))[:160]}"
                    )
        if with_logits:
            la = results[ref]["logits"]
            diff = 0.0
            for other in names[1:]:
                lb = results[other]["logits"]
                if la["ids"] != lb["ids"] or len(la["last"]) != len(lb["last"]):
                    continue  # already reported as differing ids
                d = max(abs(x - y) for x, y in zip(la["last"], lb["last"]))
                diff = max(diff, d)
                if d > LOGITS_ATOL or la["argmax"] != lb["argmax"]:
                    problems.append(
                        f"logits differ between {ref} and {other}: max |difference| {d:.3g} "
                        f"(allowed {LOGITS_ATOL}), next-token choice "
                        f"{'same' if la['argmax'] == lb['argmax'] else 'different'}"
                    )
    ref_facts = results[names[0]]["facts"] if names else {}
    report = {
        "format": CHECK_FORMAT,
        "ok": not problems and bool(results),
        "problem": "; ".join(problems) or (None if results else "no environment could be checked"),
        "envs": report_envs,
        "rope_theta": ref_facts.get("rope_theta"),
        "logits_checked": bool(with_logits and len(names) >= 2),
        "logits_max_abs_diff": diff,
        "seconds": round(time.monotonic() - start, 1),
        "fingerprint": fp,
    }
    if record:
        try:
            (p / CHECK_FILE).write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
        except OSError:
            pass  # a read-only folder: the check runs again next time
    return report


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Load a model folder in every environment and compare.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("probe", help="(internal) what this environment makes of the folder, as JSON")
    pr.add_argument("path")
    pr.add_argument("--no-logits", action="store_true")
    ck = sub.add_parser("check", help="load the folder in the app, train and eval environments and compare")
    ck.add_argument("path")
    ck.add_argument("--no-logits", action="store_true")
    a = ap.parse_args(argv)
    if a.cmd == "probe":
        print(json.dumps(probe(a.path, logits=not a.no_logits), ensure_ascii=False, default=str))
        return 0
    report = check_across_envs(a.path, logits=False if a.no_logits else None)
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(_main())
