import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(autouse=True)
def no_user_config(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user-level config.toml on the machine must not change what the tests run."""
    missing = tmp_path_factory.getbasetemp() / "no-user-config" / "config.toml"
    monkeypatch.setenv("TIDEMARK_USER_CONFIG", str(missing))
