"""The signing key of tile URLs: generated once in the state folder (owner-only) and kept across restarts,
or taken from GEOADAPT_TILE_URL_SECRET; a URL signed by one app is accepted by another on the same folder."""
from __future__ import annotations

import stat

from service.api.signed_urls import SECRET_FILE, TileUrlSigner, load_or_create_secret, resource_of
from service.settings import Settings


def test_the_secret_is_made_once_owner_only_and_kept(tmp_path):
    first = load_or_create_secret(None, tmp_path)
    f = tmp_path / SECRET_FILE
    assert len(first) >= 32 and stat.S_IMODE(f.stat().st_mode) == 0o600
    assert load_or_create_secret(None, tmp_path) == first  # a restart, or a second API process
    assert load_or_create_secret("configured", tmp_path) == b"configured"
    assert not [p for p in tmp_path.iterdir() if p.name != SECRET_FILE]  # no temporary file left


def test_signatures_name_one_resource_and_the_settings_hide_the_key(tmp_path, monkeypatch):
    signer = TileUrlSigner(b"k" * 32, ttl_s=60)
    p = signer.params("results", "a.x", "t1", now=1000)
    assert p["exp"] == "1060" and signer.check("results", "a.x", p["exp"], p["kid"], p["sig"], now=1059) == "t1"
    for kind, res in (("results", "a.y"), ("datasets", "a.x")):
        try:
            signer.check(kind, res, p["exp"], p["kid"], p["sig"], now=1000)
        except Exception as e:
            assert getattr(e, "field", None) == "sig"
        else:
            raise AssertionError((kind, res))
    u = "3f1c2a9e-0000-4000-8000-000000000001"
    assert resource_of("models", {"model_id": u.upper()}, {"dataset": u}) == f"{u}/{u}"  # one spelling of an id
    monkeypatch.setenv("GEOADAPT_TILE_URL_SECRET", "s3cret-value")
    monkeypatch.setenv("GEOADAPT_TILE_URL_TTL", "120")
    s = Settings(data_dir=tmp_path)
    assert s.tile_url_ttl == 120 and "s3cret-value" not in str(s.redacted())
