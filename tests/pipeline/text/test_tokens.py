import subprocess
import sys
from pathlib import Path

import pytest

# In a fresh interpreter: the encoding loaded ahead in a thread while the caller asks for it too.
LOADED_AHEAD = """
from pipeline.text import tokens

tokens.load_tokenizer_ahead()
print(tokens.count_tokens("hello world"), tokens._loaded_cl100k_base.cache_info().misses)
"""


@pytest.mark.parametrize("program, expected", [(LOADED_AHEAD, "2 1")])  # two tokens; the encoding read once
def test_a_tokenizer_loaded_ahead_is_read_once_though_the_run_asks_at_once(program, expected):
    ran = subprocess.run(
        [sys.executable, "-c", program], cwd=Path(__file__).parents[3], capture_output=True, text=True, timeout=60
    )
    assert (ran.stdout.strip(), ran.stderr) == (expected, "")
