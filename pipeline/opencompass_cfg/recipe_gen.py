# OpenCompass dataset config of the recipe benchmark (like opencompass/configs/datasets/*/*_gen.py).
# A run's config reads it with `with read_base(): from pipeline.opencompass_cfg.recipe_gen import
# recipe_datasets` and sets `path` (a test.jsonl in XTuner conversation format) and `limit`.
# Metrics (%, higher is better), on each answer's content (the format's fixed headers, bullets and
# step numbers removed): content_rouge1, content_rouge2, content_rougeL (jieba words), content_bleu
# (sacrebleu, 'zh' tokenizer); ingredient_recall (share of the reference's ingredients the answer
# names), ingredient_precision (share of the answer's listed ingredients that the reference has),
# ingredient_f1. Then the same metrics of constant answers on the same references
# ('baseline:template:<metric>', 'baseline:generic:<metric>'; see metrics.BASELINES).
from opencompass.openicl.icl_inferencer import GenInferencer
from opencompass.openicl.icl_prompt_template import PromptTemplate
from opencompass.openicl.icl_retriever import ZeroRetriever

from pipeline.opencompass_cfg.recipe_bench import RecipeDataset, RecipeEvaluator

recipe_reader_cfg = dict(input_columns=["system", "question"], output_column="answer")

recipe_infer_cfg = dict(
    prompt_template=dict(
        type=PromptTemplate,
        template=dict(
            begin=[dict(role="SYSTEM", fallback_role="HUMAN", prompt="{system}")],
            round=[
                dict(role="HUMAN", prompt="{question}"),
                dict(role="BOT", prompt=""),
            ],
        ),
    ),
    retriever=dict(type=ZeroRetriever),
    inferencer=dict(type=GenInferencer),  # answer length: the model's max_out_len
)

recipe_eval_cfg = dict(evaluator=dict(type=RecipeEvaluator))

recipe_datasets = [
    dict(
        abbr="recipe",
        type=RecipeDataset,
        path="data/test.jsonl",
        limit=None,
        reader_cfg=recipe_reader_cfg,
        infer_cfg=recipe_infer_cfg,
        eval_cfg=recipe_eval_cfg,
    )
]
