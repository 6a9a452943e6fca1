"""The recipe benchmark for OpenCompass: held-out recipe questions, scored by ROUGE-1/2/L (jieba
words), BLEU (sacrebleu's Chinese tokenizer) and ingredient recall.

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

from pipeline.opencompass_cfg.metrics import ingredient_recall, mean_ingredient_recall
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
    """JiebaRougeEvaluator's ROUGE-1/2/L (jieba words, rouge_chinese) over the whole answer.

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
        return {"rouge1": score["rouge-1"]["f"] * 100, "rouge2": score["rouge-2"]["f"] * 100,
                "rougeL": score["rouge-l"]["f"] * 100}


class ChineseBleuEvaluator(BleuEvaluator):
    """sacrebleu with its 'zh' tokenizer: the default '13a' sees a Chinese sentence as one word."""

    def _preprocess(self, predictions, references):
        return {"predictions": predictions, "references": references, "tokenize": "zh"}


@ICL_EVALUATORS.register_module()
class IngredientRecallEvaluator(BaseEvaluator):
    """Share (in %) of the reference's ingredient names that the answer mentions."""

    def score(self, predictions, references):
        if len(predictions) != len(references):
            return {"error": "predictions and references have different length"}
        details = []
        for p, r in zip(predictions, references):
            recall, missed = ingredient_recall(p or "", r or "")
            details.append({"pred": p, "answer": r, "ingredient_recall": recall, "missed_ingredients": missed})
        value = mean_ingredient_recall(predictions, references)
        return {"ingredient_recall": 0.0 if value is None else value, "details": details}


@ICL_EVALUATORS.register_module()
class RecipeEvaluator(BaseEvaluator):
    """All recipe metrics from one inference: ROUGE-1/2/L, BLEU and ingredient recall (each in %)."""

    def score(self, predictions, references):
        if len(predictions) != len(references):
            return {"error": "predictions and references have different length"}
        predictions = [p or "" for p in predictions]
        result = dict(FullAnswerJiebaRougeEvaluator().score(predictions, references))
        result["bleu"] = ChineseBleuEvaluator().score(predictions, references)["score"]
        result.update(IngredientRecallEvaluator().score(predictions, references))
        return result
