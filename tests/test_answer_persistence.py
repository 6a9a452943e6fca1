"""An answer is saved as it streams, so a crash of the app process (kill -9, the OOM killer)
keeps what the user saw; the next app start marks it 'interrupted'. Real process, real SQLite,
the tiny transformers model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from backend.history import History
from tests.conftest import ROOT, wait_until

STREAM_SCRIPT = """
import json, sys
from backend.chat_service import ChatService
from backend.engines import GenerationParams
from backend.engines.transformers_engine import TransformersEngine
from backend.history import History

history = History(sys.argv[1])
service = ChatService(TransformersEngine(sys.argv[2], device="cpu"), history, None, 4096)
cid = history.create_conversation()
print(json.dumps(cid), flush=True)
for delta in service.ask(cid, "红烧肉怎么做？", GenerationParams(max_new_tokens=3000, temperature=0)):
    print(json.dumps(delta), flush=True)
"""


def test_kill_9_while_streaming_keeps_what_was_shown(tmp_path, tiny_model):
    db = tmp_path / "app.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", STREAM_SCRIPT, str(db), str(tiny_model)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        cid = json.loads(proc.stdout.readline())
        shown = ""
        while len(shown) < 200:  # what the user has seen so far
            line = proc.stdout.readline()
            assert line, "the answer ended before 200 characters"
            shown += json.loads(line)
        history = History(db)

        def saved():
            msgs = history.messages(cid)
            return len(msgs) == 2 and len(msgs[1]["content"]) >= 200 and msgs[1]

        bot = wait_until(saved, "the streaming answer to be saved with what was shown")
        assert bot["finish_reason"] == "streaming"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
        proc.wait()
    bot = history.messages(cid)[1]
    shown += "".join(json.loads(line) for line in proc.stdout.read().splitlines())  # printed before the kill
    assert len(bot["content"]) >= 200 and shown.startswith(bot["content"])
    assert bot["engine"] == "transformers"
    assert history.mark_interrupted() == 1  # what the next app start does
    bot = history.messages(cid)[1]
    assert bot["finish_reason"] == "interrupted"
    assert "回答不完整（interrupted）" in history.export_markdown(cid)
