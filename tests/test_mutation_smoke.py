"""A smoke run of the mutation testing (tests/mutation.py, docs/contributing.md): mutmut, and the
forked runner (tests/mutation_fork.py), on one small function of the cache key against its unit
tests, kill every mutant that changes it; the forked runner tells a function no test calls."""

from __future__ import annotations

import mutation
import pytest

pytest.importorskip("mutmut")


@pytest.mark.slow
@pytest.mark.parametrize("fork", [False, True], ids=["mutmut", "forked"])
def test_mutmut_kills_every_mutant_of_prompt_keys(tmp_path, fork):
    verdicts = mutation.run(
        "clipcond/cache_key.py",
        tmp_path,
        only="clipcond.cache_key.x_prompt_keys__mutmut_*",
        tests=["tests/test_cache_key_parts.py", "-k", "prompt_keys or surrogate"],
        fork=fork,
    )
    ran = {name: verdict for name, verdict in verdicts.items() if ".x_prompt_keys__" in name}
    assert len(ran) >= 5, verdicts
    survivors = {name for name, verdict in ran.items() if verdict != "killed"}
    # mutant 9 spells the codec "UTF-8": the same codec, so nothing can tell it apart
    # (benchmarks/results/mutation.md); every other one changes the keys and must die
    assert survivors == {"clipcond.cache_key.x_prompt_keys__mutmut_9"}, ran


@pytest.mark.slow
def test_the_forked_runner_names_the_mutants_no_test_calls(tmp_path):
    verdicts = mutation.run(
        "clipcond/cache_key.py",
        tmp_path,
        only=["clipcond.cache_key.x_settings_key__mutmut_1*", "clipcond.cache_key.x_prompt_keys__mutmut_1"],
        tests=["tests/test_cache_key_parts.py::test_prompt_keys_are_one_sha256_per_text_in_order"],
        fork=True,
    )
    assert verdicts["clipcond.cache_key.x_prompt_keys__mutmut_1"] == "killed"
    unreached = {name: verdict for name, verdict in verdicts.items() if "x_settings_key" in name}
    assert len(unreached) >= 5 and set(unreached.values()) == {"no tests"}, verdicts
