"""A smoke run of the mutation testing (tests/mutation.py, docs/contributing.md): mutmut on one
small function of the cache key, against its unit tests, kills every mutant that changes it."""

from __future__ import annotations

import mutation
import pytest

pytest.importorskip("mutmut")


@pytest.mark.slow
def test_mutmut_kills_every_mutant_of_prompt_keys(tmp_path):
    verdicts = mutation.run(
        "clipcond/cache_key.py",
        tmp_path,
        only="clipcond.cache_key.x_prompt_keys__mutmut_*",
        tests=["tests/test_cache_key_parts.py", "-k", "prompt_keys or surrogate"],
    )
    ran = {name: verdict for name, verdict in verdicts.items() if ".x_prompt_keys__" in name}
    assert len(ran) >= 5, verdicts
    survivors = {name for name, verdict in ran.items() if verdict != "killed"}
    # mutant 9 spells the codec "UTF-8": the same codec, so nothing can tell it apart
    # (benchmarks/results/mutation.md); every other one changes the keys and must die
    assert survivors == {"clipcond.cache_key.x_prompt_keys__mutmut_9"}, ran
