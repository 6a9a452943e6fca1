"""Eval · 评测: OpenCompass results of base vs fine-tuned models.

UI only. Runs and their tables: pipeline.eval_results (every folder under <workspace>/eval/
holding summary/summary_*.csv, copied-in runs included); C-Eval data status:
pipeline.evaluate. Runs are started on the Admin page (stage "Evaluate").
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from pipeline.eval_results import (
    compare,
    compare_baselines,
    default_pair,
    find_runs,
    log_tail,
    not_above_baselines,
    run_table,
    sample_answers,
)
from pipeline.evaluate import CEVAL_LAYOUT, ceval_folder
from ui.page_settings import settings_or_stop

settings = settings_or_stop()

st.title("📊 Eval · 评测")
st.caption(
    "OpenCompass scores (%, higher is better) of the base and fine-tuned models: the held-out recipe "
    "questions and C-Eval (general ability kept after fine-tuning). Recipe scores measure the content: "
    "`content_rouge1/2/L` and `content_bleu` compare the ingredients and steps with the format's fixed "
    "headers, bullets and step numbers removed; `ingredient_recall` is the share of the reference's "
    "ingredients the answer names, `ingredient_precision` the share of the ingredients the answer lists that "
    "the reference has, `ingredient_f1` both in one. The **constant answer** columns score the same fixed "
    "answer for every question (the bare template; a generic recipe of pantry staples) on the same "
    "references: a model that does not beat them is no better than a template."
)

# ---- C-Eval data status ----------------------------------------------------------------------
ceval_dir = ceval_folder(settings.ceval_data)
if ceval_dir:
    st.caption(f"C-Eval data: `{ceval_dir}` ✅")
else:
    with st.expander("C-Eval data: not found · 未找到 C-Eval 数据", expanded=False):
        configured = (
            f"`{settings.ceval_data}` holds no C-Eval data" if settings.ceval_data else "no folder is configured"
        )
        st.warning(f"C-Eval cannot run: {configured}. It is never downloaded here.")
        st.markdown(
            f"Put the OpenCompass data folder on this machine (unpack `OpenCompassData-core-*.zip`), so that "
            f'`<folder>/{CEVAL_LAYOUT}` exists (52 subjects), then set `ceval_data = "<folder>"` in '
            f"`{settings.workspace / 'settings.toml'}` or the environment variable `RECIPE_CEVAL_DATA`. "
            f"The recipe benchmark needs no extra data."
        )

# ---- runs ------------------------------------------------------------------------------------
runs, problems = find_runs(settings.eval_dir)
for p in problems:
    st.warning(f"Skipped an unreadable result: {p}")
if not runs:
    st.info(
        f"No evaluation run yet · 暂无评测结果. Start one on the Admin page (Run a stage → Evaluate), or copy "
        f"an OpenCompass output folder (one holding `summary/summary_*.csv`) into `{settings.eval_dir}`."
    )
    st.stop()


def label(run) -> str:
    when = run.time.strftime("%Y-%m-%d %H:%M") if run.time else "time unknown"
    return f"{run.id} · {when} · {', '.join(run.models)}"


by_label = {label(r): r for r in runs}
run = by_label[st.selectbox("Run · 评测批次", list(by_label), key="eval_run")]
meta = run.meta
if meta:
    bits = [f"test split `{meta.get('test_file', '?')}`", f"backend {meta.get('backend', '?')}"]
    if meta.get("limit"):
        bits.append(f"{meta['limit']} questions per data set")
    if meta.get("max_out_len"):
        bits.append(f"answers up to {meta['max_out_len']} tokens")
    st.caption(" · ".join(bits))
else:
    st.caption(f"Copied-in run (no run.json): `{run.path}`")


tab_table, tab_compare, tab_answers = st.tabs(["Table · 结果表", "Compare · 对比", "Answers · 回答样例"])

with tab_table:
    rows = run_table(run)
    df = pd.DataFrame(rows, columns=["dataset", "metric", *run.models, *run.baseline_columns])
    st.dataframe(
        df,
        hide_index=True,
        width="stretch",
        column_config={
            c: st.column_config.NumberColumn(c, format="%.2f") for c in [*run.models, *run.baseline_columns]
        },
    )
    if run.baseline_columns:
        for m in run.models:
            behind = not_above_baselines(run, m)
            if behind:
                listed = ", ".join(dict.fromkeys(f"{b['dataset']} · {b['metric']}" for b in behind))
                st.warning(
                    f"**{m}** does not beat a constant answer on {len(behind)} score(s): {listed}. "
                    f"There it is no better than a template."
                )
    elif any(r.dataset == "recipe" for r in run.rows):
        st.caption(
            "This run has no constant-answer columns: it was scored before they existed, and its recipe "
            "ROUGE/BLEU counted the fixed template of every answer (a constant answer scored as much)."
        )
    failed = sorted({(m, d) for m, d, _ in run.failed_cells})
    if failed:
        st.error(
            f"{len(failed)} task(s) produced no score (cells shown empty / '-' in OpenCompass's summary): "
            + ", ".join(f"{m} / {d}" for m, d in failed[:8])
        )
        for m, d in failed[:8]:
            path, tail = log_tail(run.path, m, d)
            with st.expander(f"Log of {m} / {d}"):
                if path:
                    st.caption(str(path))
                    st.code(tail or "(empty log)", language="text")
                else:
                    st.caption("No task log in this run folder.")
    st.caption(f"Summary file: `{run.csv}`")

with tab_compare:
    choices = {f"{m} ({r.id})": (r, m) for r in runs for m in r.models}
    base, tuned = default_pair(run)
    keys = list(choices)
    if len(keys) < 2:
        st.info(
            "Comparing needs two models: evaluate the base model and a fine-tuned one (the Admin page's "
            "Evaluate stage adds the base model when RECIPE_BASE_MODEL is set)."
        )
    else:

        def index_of(model, fallback):
            k = f"{model} ({run.id})" if model else None
            return keys.index(k) if k in keys else fallback

        c = st.columns(2)
        a_key = c[0].selectbox("Base · 基座模型", keys, index=index_of(base, 0), key="cmp_base")
        b_key = c[1].selectbox("Fine-tuned · 微调模型", keys, index=index_of(tuned, 1), key="cmp_tuned")
        (ra, ma), (rb, mb) = choices[a_key], choices[b_key]
        cmp_rows = compare(ra, ma, rb, mb)
        baselines = compare_baselines(ra, rb)
        cmp = pd.DataFrame(cmp_rows, columns=["dataset", "metric", "base", "fine-tuned", "difference", *baselines])
        st.dataframe(
            cmp,
            hide_index=True,
            width="stretch",
            column_config={
                "base": st.column_config.NumberColumn(f"base: {ma}", format="%.2f"),
                "fine-tuned": st.column_config.NumberColumn(f"fine-tuned: {mb}", format="%.2f"),
                "difference": st.column_config.NumberColumn("difference", format="%+.2f"),
                **{b: st.column_config.NumberColumn(b, format="%.2f") for b in baselines},
            },
        )
        better = sum(1 for r in cmp_rows if (r["difference"] or 0) > 0)
        worse = sum(1 for r in cmp_rows if (r["difference"] or 0) < 0)
        st.caption(f"Fine-tuned better on {better}, worse on {worse} of {len(cmp_rows)} scores.")

        datasets = list(dict.fromkeys(r["dataset"] for r in cmp_rows))
        shown = st.multiselect("Data sets in the charts", datasets, default=datasets[:6], key="cmp_datasets")
        long = pd.DataFrame(
            [
                {"score": f"{r['dataset']} · {r['metric']}", "model": who, "value": r[side]}
                for r in cmp_rows
                if r["dataset"] in shown
                for side, who in (
                    ("base", f"base: {ma}"),
                    ("fine-tuned", f"fine-tuned: {mb}"),
                    *((b, b) for b in baselines),
                )
                if r.get(side) is not None
            ]
        )
        if long.empty:
            st.info("No score to chart for the chosen data sets.")
        else:
            chart = (
                alt.Chart(long)
                .mark_bar()
                .encode(
                    x=alt.X("model:N", title=None, axis=alt.Axis(labels=False, ticks=False)),
                    y=alt.Y("value:Q", title="score (%)"),
                    color=alt.Color("model:N", legend=alt.Legend(orient="bottom", title=None)),
                    tooltip=["score", "model", alt.Tooltip("value:Q", format=".2f")],
                )
                .properties(width=120, height=160)
                .facet(facet=alt.Facet("score:N", title=None, sort=list(dict.fromkeys(long["score"]))), columns=4)
            )
            st.altair_chart(chart)

with tab_answers:
    datasets = list(dict.fromkeys(r.dataset for r in run.rows))
    if not datasets:
        st.info("This run has no data set.")
    else:
        ds = st.selectbox("Data set", datasets, key="ans_dataset")
        samples = sample_answers(run, ds, run.models, n=5)
        if not samples:
            st.info("No predictions kept in this run folder for that data set.")
        for i, s in enumerate(samples, 1):
            st.markdown(f"**{i}. {s['question'] or '(question not recorded)'}**")
            cols = st.columns(1 + len(run.models))
            cols[0].caption("Reference · 参考答案")
            cols[0].text(s["reference"] or "")
            for col, m in zip(cols[1:], run.models):
                col.caption(m)
                col.text(s[m] if s[m] is not None else "(no answer)")
