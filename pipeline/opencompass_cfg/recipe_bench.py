"""The recipe benchmark for OpenCompass: held-out recipe questions, scored on their content (the
answer format's fixed headers, bullets and step numbers removed, see ``metrics.content_text``) by
ROUGE-1/2/L (jieba words) and BLEU (sacrebleu's Chinese tokenizer), and by ingredient recall,
precision and F1. The constant answers of ``metrics.BASELINES`` are scored on the same references
in every run (``baseline:<name>:<metric>``), so a model can be seen to beat a template or not.

Imported by OpenCompass inside the eval environment (``pipeline.evaluate`` puts the project root
on PYTHONPATH). The questions come from a test split in XTuner's conversation format, one JSON
object a line: ``{"conversation": [{"system": ..., "input": ..., "output": ...}]}``.
"""

from __future__ import annotations

import re

import jieba
from datasets import Dataset
from opencompass.datasets.base import BaseDataset
from opencompass.openicl.icl_evaluator import BaseEvaluator, BleuEvaluator, JiebaRougeEvaluator
from opencompass.registry import ICL_EVALUATORS, LOAD_DATASET

from pipeline.opencompass_cfg.metrics import (
    BASELINES,
    INGREDIENT_METRICS,
    baseline_metric,
    clean_prediction,
    content_text,
    ingredient_scores,
    mean_ingredient_scores,
)
from pipeline.opencompass_cfg.testset import read_questions


@LOAD_DATASET.register_module()
class RecipeDataset(BaseDataset):
    @staticmethod
    def load(path: str, limit: int | None = None) -> Dataset:
        rows = read_questions(path, limit)
        if not rows:
            raise ValueError(f"{path}: no usable question (expected XTuner conversation lines with input/output)")
        return Dataset.from_list(rows)


class FullAnswerJiebaRougeEvaluator(JiebaRougeEvaluator):
    """JiebaRougeEvaluator's ROUGE-1/2/L (jieba words, rouge_chinese) over the whole text given
    (RecipeEvaluator gives it each answer's content, see metrics.content_text).

    OpenCompass's JiebaRougeEvaluator first applies general_postprocess, which keeps only the text
    before the first newline, comma or period: for a recipe answer that is the header line
    '您需要准备以下食材', so every answer in our format would score 100."""

    @staticmethod
    def words(text: str) -> str:
        text = re.sub(r"[^\w\s]", " ", text or "")
        return " ".join(w for w in jieba.cut(text) if w.strip())

    def score(self, predictions, references):
        from rouge_chinese import Rouge

        if len(predictions) != len(references):
            return {"error": "predictions and references have different length"}
        preds = [self.words(p) or "__PREDPLACEHOLDER__" for p in predictions]
        refs = [self.words(r) or "__REFRPLACEHOLDER__" for r in references]
        score = Rouge().get_scores(preds, refs, avg=True)
        return {
            "rouge1": score["rouge-1"]["f"] * 100,
            "rouge2": score["rouge-2"]["f"] * 100,
            "rougeL": score["rouge-l"]["f"] * 100,
        }


class ChineseBleuEvaluator(BleuEvaluator):
    """sacrebleu with its 'zh' tokenizer: the default '13a' sees a Chinese sentence as one word."""

    def _preprocess(self, predictions, references):
        return {"predictions": predictions, "references": references, "tokenize": "zh"}


@ICL_EVALUATORS.register_module()
class IngredientRecallEvaluator(BaseEvaluator):
    """Ingredient recall, precision and F1 (each in %): the share of the reference's ingredient
    names that the answer mentions, the share of the ingredients the answer lists that the
    reference has, and their harmonic mean."""

    def score(self, predictions, references):
        if len(predictions) != len(references):
            return {"error": "predictions and references have different length"}
        predictions = [clean_prediction(p) for p in predictions]
        details = []
        for p, r in zip(predictions, references):
            s = ingredient_scores(p, r or "") or {"missed_ingredients": [], "extra_ingredients": []}
            details.append(
                {
                    "pred": p,
                    "answer": r,
                    **{m: s.get(m) for m in INGREDIENT_METRICS},
                    "missed_ingredients": s["missed_ingredients"],
                    "extra_ingredients": s["extra_ingredients"],
                }
            )
        means = mean_ingredient_scores(predictions, references)
        return {**{m: 0.0 if v is None else v for m, v in means.items()}, "details": details}


def content_scores(predictions: list[str], references: list[str]) -> dict:
    """content_rouge1/2/L, content_bleu, ingredient_recall/precision/f1 (each in %) of predictions
    against references, the fixed scaffolding of the answer format removed before ROUGE/BLEU."""
    preds = [content_text(p) for p in predictions]
    refs = [content_text(r or "") for r in references]
    rouge = FullAnswerJiebaRougeEvaluator().score(preds, refs)
    out = {f"content_{k}": rouge[k] for k in ("rouge1", "rouge2", "rougeL")}
    out["content_bleu"] = ChineseBleuEvaluator().score(preds, refs)["score"]
    ingredients = IngredientRecallEvaluator().score(predictions, references)
    out.update({m: ingredients[m] for m in INGREDIENT_METRICS})
    return out


@ICL_EVALUATORS.register_module()
class RecipeEvaluator(BaseEvaluator):
    """All recipe metrics from one inference (see content_scores), then the same metrics of each
    constant answer of BASELINES on the same references, as 'baseline:<name>:<metric>'.

    A prediction cut inside a character at max_new_tokens ends in U+FFFD (transformers decodes the
    incomplete bytes so): that half character is dropped before scoring and in the details."""

    def score(self, predictions, references):
        if len(predictions) != len(references):
            return {"error": "predictions and references have different length"}
        predictions = [clean_prediction(p) for p in predictions]
        result = content_scores(predictions, references)
        details = IngredientRecallEvaluator().score(predictions, references)["details"]
        for name, answer in BASELINES.items():
            for metric, value in content_scores([answer] * len(references), references).items():
                result[baseline_metric(name, metric)] = value
        result["details"] = details
        return result
