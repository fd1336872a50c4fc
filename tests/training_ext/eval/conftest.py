import pytest

from training_ext.eval import runner


@pytest.fixture
def loads(monkeypatch):
    """The model specs runner.load_model was called with, in order."""
    calls, real = [], runner.load_model

    def recording(spec, *args):
        calls.append(spec.spec)
        return real(spec, *args)

    monkeypatch.setattr(runner, "load_model", recording)
    return calls
