"""A faithful re-expression of the tutorial's XiaChuFang -> XTuner converter, as the baseline of
bench/bench_prepare.py: read all lines into memory, json.loads each, build the conversation,
json.dump every 100,000 records into a JSON array with indent=4 (the last partial block is
silently dropped, as in the tutorial). It stops at the first bad line.

    python -m bench.tutorial_converter INPUT OUT_PREFIX
"""

import json
import sys

SYSTEM = (
    "你是一个经验丰富的厨师，你会做很多菜。用户报上自己所需的菜名后，"
    "你可以把做菜所需要的食材（附用量），以及做菜的方法按步骤告诉用户。"
)


def convert(input_file: str, output_prefix: str, batch_size: int = 100000) -> int:
    with open(input_file, "r", encoding="utf-8") as f:
        lines = f.readlines()
    data_list = []
    written = 0
    for i, line in enumerate(lines):
        data = json.loads(line)
        output = "您需要准备以下食材:\n"
        for ingredient in data["recipeIngredient"]:
            output += ingredient + "\n"
        output += "按以下方法制作:\n"
        for step in data["recipeInstructions"]:
            output += step + "\n"
        data_list.append({"conversation": [{"system": SYSTEM, "input": data["keywords"][0], "output": output}]})
        if (i + 1) % batch_size == 0:
            with open(f"{output_prefix}_{i // batch_size}.json", "w", encoding="utf-8") as out:
                json.dump(data_list, out, ensure_ascii=False, indent=4)
            written += len(data_list)
            data_list = []
    return written


if __name__ == "__main__":
    print(convert(sys.argv[1], sys.argv[2]))
