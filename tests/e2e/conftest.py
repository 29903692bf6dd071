import pytest

from corpus_cases import CorpusRun, run_corpus


@pytest.fixture(scope="session")
def corpus_run(spark, tmp_path_factory) -> CorpusRun:
    """The whole corpus through run-local, once for test_hostile_input and test_check."""
    return run_corpus(tmp_path_factory.mktemp("corpus-out"))
