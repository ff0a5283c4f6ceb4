"""A registry row that cannot be read (written behind the server's back, as a bad upload of
an older version could have) is quarantined: listing, `/v1/models` and resolving the other
adapters go on; the row answers 404 saying it is quarantined."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from tests.security.conftest import Witness
from tests.security.expect import assert_envelope
from tests.security.payloads import ADMIN_KEY, INFER_KEY

pytestmark = pytest.mark.engine

POISONED = "poisoned"
# The manifest of issue 18's poisoned row: `lora_alpha` NaN (and no files in the store).
MANIFEST = '{"name": "poisoned", "lora_alpha": NaN}'


@pytest.fixture
def poisoned_row(witness: Witness) -> Iterator[None]:
    database = witness.server.log.parent / "adapters" / "registry.db"
    with sqlite3.connect(database) as db:
        db.execute("INSERT INTO names VALUES (?, 1, 1)", (POISONED,))
        db.execute(
            "INSERT INTO versions (name, version, digest, manifest, created_at) "
            "VALUES (?, 1, 'deadbeef', ?, '2026-01-01T00:00:00+00:00')",
            (POISONED, MANIFEST),
        )
    yield
    with sqlite3.connect(database) as db:
        db.execute("DELETE FROM versions WHERE name = ?", (POISONED,))
        db.execute("DELETE FROM names WHERE name = ?", (POISONED,))


@pytest.mark.usefixtures("poisoned_row")
def test_unreadable_row_is_quarantined(witness: Witness) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    infer = {"authorization": f"Bearer {INFER_KEY}"}
    listing = witness.http.get("/v1/adapters", headers=admin)
    assert listing.status_code == 200, listing.text
    assert "alpha" in {row["name"] for row in listing.json()}
    models = witness.http.get("/v1/models", headers=infer)
    assert models.status_code == 200 and POISONED not in models.text, models.text
    for response in (
        witness.http.get(f"/v1/adapters/{POISONED}/versions/1", headers=admin),
        witness.http.post("/v1/generate", json={"adapter": POISONED, "input": "Hi"}, headers=infer),
    ):
        witness.answers.append(response.text)
        assert response.status_code == 404, response.text
        assert_envelope(404, response.json(), (POISONED, "quarantined"))
