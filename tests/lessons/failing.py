"""What the lessons' check tests share: a check that must fail with words in its message, and a check
that must pass on the public cases and on hidden seeds with nothing on stderr."""

import pytest


def check_fails(check, fn, *words, **kwargs):
    """Run ``check(fn)``, which must fail without a traceback in its message and with each of ``words``;
    returns the failure's fields (``Failure``)."""
    with pytest.raises(AssertionError) as info:
        check(fn, **kwargs)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert "Traceback" not in message
    return info.value.failure


def check_passes(check, fn, capsys, hidden_seeds):
    """``check(fn)`` passes on the public cases and on each hidden seed, printing one line each."""
    for kwargs in [{}] + [{"hidden": True, "seed": s} for s in hidden_seeds]:
        assert check(fn, **kwargs) is None
    out, err = capsys.readouterr()
    assert out.count("passed") == 1 + len(hidden_seeds) and err == ""
