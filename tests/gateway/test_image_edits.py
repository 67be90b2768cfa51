"""``POST /v1/images/edits`` in both shapes the broker takes: multipart (``image`` once or more, ``mask``,
``prompt``, ``model``, ``n``, ...; the openai SDK's ``images.edit``) and JSON with base64 images (what
curl sends). Each is validated before any provider sees it, priced and reserved per image (``n``), held
to the image (IPM) budget, and its receipts are those of generations.

A static upstream of our own on 127.0.0.1 shows what reaches a provider, byte for byte; the devnet's
image-editing provider (the simulator's ``/v1/proxy/images/edits``) shows the TEE verdict per image.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from router.client import Router
from router.config import GatewayConfig, RouterConfig, StaticUpstream
from router.devnet import Devnet, DevnetConfig, ProviderSpec
from router.devnet.node_tools import NodeModules
from router.devnet.simulator.limits import RateLimits
from router.pool.limits import ProviderLimits
from router.server.app import Gateway
from tests.conftest import watch_text
from tests.gateway.conftest import API_KEY, router_config
from tests.gateway.support import TIMEOUT, Answer
from tests.support import funded_wallet, serving

EDITS = "/v1/images/edits"
EDIT_MODEL = "edit-s"
PRICE = 7_000_000  # neuron per image
IMAGES_PER_MINUTE = 6
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(32))
PNG_B64 = base64.b64encode(PNG).decode()
BOUNDARY = "zg-edits-boundary"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def edited(index: int) -> bytes:
    return PNG + bytes([index])


def form_parts(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """A multipart body's (name, bytes) parts, in order, as a provider reads them."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        parts.append((str(part.get_param("name", header="content-disposition")), payload))
    return parts


def multipart(*parts: tuple[str, bytes, str | None]) -> bytes:
    """A multipart body with the fixed ``BOUNDARY``: (name, bytes, file name or None) per part."""
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
        if filename:
            head += "Content-Type: image/png\r\n"
        out += head.encode() + b"\r\n" + value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = {**AUTH, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@dataclass
class Edits:
    """A gateway whose only provider is the static ``edits`` upstream, and what that upstream saw."""

    url: str
    router: Router
    http: aiohttp.ClientSession
    seen: list[tuple[str, bytes]] = field(default_factory=list)

    async def post(self, body: bytes, headers: dict[str, str], path: str = EDITS) -> Answer:
        async with asyncio.timeout(TIMEOUT), self.http.post(self.url + path, data=body, headers=headers) as r:
            text = await r.text()
        assert "Traceback" not in text, text
        watch_text(f"{text} {dict(r.headers)!r}", f"the response to POST {path}")
        return Answer(r.status, r.headers, text)

    def sdk(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=API_KEY, max_retries=0, timeout=TIMEOUT)

    def images_left(self) -> float:
        state = self.router.pool.get("edits")
        assert state is not None
        view = self.router.pool.capacity.view(state.lanes[0], self.router.now())
        assert view.images is not None
        return view.images


@pytest.fixture
async def edits() -> AsyncIterator[Edits]:
    seen: list[tuple[str, bytes]] = []

    async def edit(request: web.Request) -> web.Response:
        body, content_type = await request.read(), request.headers["Content-Type"]
        seen.append((content_type, body))
        if content_type.startswith("multipart/form-data"):
            n = int(dict(form_parts(body, content_type)).get("n", b"1"))
        else:
            n = json.loads(body).get("n", 1)
        data = [{"b64_json": base64.b64encode(edited(i)).decode()} for i in range(n)]
        return web.json_response({"created": 1, "data": data})

    app = web.Application()
    app.router.add_post("/v1/images/edits", edit)
    limits = ProviderLimits(
        requests_per_minute=600,
        burst=50,
        max_concurrent=10,
        images_per_minute=IMAGES_PER_MINUTE,
        image_burst=10,
    )
    async with serving(app) as url:
        upstream = StaticUpstream(
            name="edits",
            url=url + "/v1",
            models=(EDIT_MODEL,),
            service_type="image-editing",
            output_price=PRICE,
            limits=limits,
        )
        gateway_config = GatewayConfig(port=0, api_keys=(API_KEY,), shutdown_timeout=0.5)
        async with (
            Router(RouterConfig(static_upstreams=(upstream,))) as router,
            Gateway(router, gateway_config) as gateway,
            aiohttp.ClientSession() as http,
        ):
            yield Edits(gateway.url, router, http, seen)


class TestMultipart:
    async def test_the_openai_sdk_edits_an_image_priced_per_image(self, edits: Edits) -> None:
        """``images.edit`` with one picture and ``n=2``: two edited pictures, billed as two images, with the
        receipts of a generation; the provider gets the SDK's form as it was sent."""
        async with edits.sdk() as client:
            raw = await client.images.with_raw_response.edit(
                model=EDIT_MODEL, image=("cat.png", PNG, "image/png"), prompt="add a hat", n=2
            )
        reply = raw.parse()
        assert [base64.b64decode(item.b64_json or "") for item in reply.data or []] == [edited(0), edited(1)]
        assert raw.headers["x-zg-provider"] == "edits"
        assert raw.headers["x-zg-cost"] == str(2 * PRICE)
        assert raw.headers["x-zg-attempts"] == "1"
        assert raw.headers["x-zg-verifiability"] == "none"
        [(content_type, body)] = edits.seen
        assert content_type.startswith("multipart/form-data; boundary=")
        parts = dict(form_parts(body, content_type))
        assert (parts["image"], parts["prompt"], parts["model"], parts["n"]) == (
            PNG,
            b"add a hat",
            b"edit-s",
            b"2",
        )

    async def test_several_images_go_on_as_the_sdk_names_them(self, edits: Edits) -> None:
        """A list of pictures is sent as ``image[]`` parts: all of them reach the provider, in order."""
        second = PNG + b"second"
        async with edits.sdk() as client:
            reply = await client.images.edit(
                model=EDIT_MODEL,
                image=[("a.png", PNG, "image/png"), ("b.png", second, "image/png")],
                prompt="merge them",
            )
        assert len(reply.data or []) == 1
        [(content_type, body)] = edits.seen
        assert [value for name, value in form_parts(body, content_type) if name == "image[]"] == [PNG, second]

    async def test_a_form_passes_on_byte_for_byte(self, edits: Edits) -> None:
        """The body and its Content-Type (boundary and all) reach the provider unchanged, mask included."""
        body = multipart(
            ("image", PNG, "cat.png"),
            ("mask", b"MASK", "mask.png"),
            ("prompt", b"a hat", None),
            ("model", EDIT_MODEL.encode(), None),
            ("n", b"3", None),
            ("response_format", b"b64_json", None),
        )
        answer = await edits.post(body, MULTIPART)
        assert answer.status == 200, answer.text
        assert len(answer.json()["data"]) == 3
        assert answer.headers["x-zg-cost"] == str(3 * PRICE)
        assert edits.seen == [(MULTIPART["Content-Type"], body)]


class TestJson:
    async def test_base64_images_in_json_as_curl_sends_them(self, edits: Edits) -> None:
        """The broker's JSON shape: ``image`` (and ``mask``) base64 or a data URI, priced per image; the body
        goes on untouched."""
        body = json.dumps(
            {
                "model": EDIT_MODEL,
                "image": f"data:image/png;base64,{PNG_B64}",
                "mask": PNG_B64,
                "prompt": "add a hat",
                "n": 2,
                "extras": {"ref_images": [PNG_B64], "strength": 0.5, "seed": 7},
            }
        ).encode()
        answer = await edits.post(body, {**AUTH, "Content-Type": "application/json"})
        assert answer.status == 200, answer.text
        assert [base64.b64decode(item["b64_json"]) for item in answer.json()["data"]] == [
            edited(0),
            edited(1),
        ]
        assert answer.headers["x-zg-cost"] == str(2 * PRICE)
        assert answer.headers["x-zg-provider"] == "edits"
        assert edits.seen == [("application/json", body)]

    async def test_our_provider_field_is_taken_off_before_the_provider_sees_it(self, edits: Edits) -> None:
        """Routing preferences in the body are ours: the provider gets the edit without them."""
        edit = {"model": EDIT_MODEL, "image": PNG_B64, "prompt": "a hat"}
        body = json.dumps({**edit, "provider": {"order": ["edits"]}}).encode()
        answer = await edits.post(body, {**AUTH, "Content-Type": "application/json"})
        assert answer.status == 200, answer.text
        [(_, forwarded)] = edits.seen
        assert json.loads(forwarded) == edit


class TestBudgetsAndReceipts:
    async def test_each_image_asked_for_is_taken_from_the_image_budget(self, edits: Edits) -> None:
        """Admission reserves ``n`` images of the lane's IPM bucket (the broker counts edits as images)."""
        before = edits.images_left()
        async with edits.sdk() as client:
            await client.images.edit(model=EDIT_MODEL, image=("cat.png", PNG, "image/png"), prompt="x", n=3)
        taken = before - edits.images_left()
        # The bucket refills at 90% of 6 a minute meanwhile: well under a tenth of an image.
        assert 2.9 < taken <= 3.0

    async def test_a_synchronous_verdict_says_a_static_upstream_is_unverifiable(self, edits: Edits) -> None:
        """``x-zg-verify: sync`` on an edit is answered as on a generation: nothing signs a static
        upstream's pictures."""
        body = json.dumps({"model": EDIT_MODEL, "image": PNG_B64, "prompt": "a hat"}).encode()
        headers = {**AUTH, "Content-Type": "application/json", "x-zg-verify": "sync"}
        answer = await edits.post(body, headers)
        assert answer.status == 200, answer.text
        assert answer.headers["x-zg-verify"] == "unverifiable"

    async def test_an_editing_model_is_not_served_on_generations(self, edits: Edits) -> None:
        """Edits and generations are different service types: each route has its own providers."""
        body = json.dumps({"model": EDIT_MODEL, "prompt": "a hat"}).encode()
        answer = await edits.post(
            body, {**AUTH, "Content-Type": "application/json"}, "/v1/images/generations"
        )
        assert answer.status == 404, answer.text
        assert answer.json()["error"]["message"] == "model 'edit-s' is not served on images/generations"
        assert edits.seen == []


BAD_FORMS = [
    ("no-image", [("prompt", b"p", None), ("model", b"edit-s", None)], "image", "is required"),
    (
        "empty-image",
        [("image", b"", "a.png"), ("prompt", b"p", None), ("model", b"edit-s", None)],
        "image",
        "empty",
    ),
    ("no-prompt", [("image", PNG, "a.png"), ("model", b"edit-s", None)], "prompt", "is required"),
    ("no-model", [("image", PNG, "a.png"), ("prompt", b"p", None)], "model", "model parameter"),
    (
        "n-zero",
        [("image", PNG, "a.png"), ("prompt", b"p", None), ("model", b"edit-s", None), ("n", b"0", None)],
        "n",
        "from 1 to 10",
    ),
    (
        "format",
        [
            ("image", PNG, "a.png"),
            ("prompt", b"p", None),
            ("model", b"edit-s", None),
            ("response_format", b"png", None),
        ],
        "response_format",
        "one of url, b64_json",
    ),
    (
        "stream",
        [
            ("image", PNG, "a.png"),
            ("prompt", b"p", None),
            ("model", b"edit-s", None),
            ("stream", b"true", None),
        ],
        "stream",
        "streaming is not supported on /images/edits",
    ),
]

BAD_JSON: list[tuple[str, dict[str, Any], str, str]] = [
    ("no-image", {"prompt": "p"}, "image", "`image` is required"),
    (
        "image-url",
        {"image": "https://example.com/cat.png", "prompt": "p"},
        "image",
        "must be a base64-encoded image",
    ),
    (
        "image-list",
        {"image": [PNG_B64, "not base64!"], "prompt": "p"},
        "image[1]",
        "must be a base64-encoded image",
    ),
    ("mask", {"image": PNG_B64, "mask": 5, "prompt": "p"}, "mask", "must be a base64-encoded image"),
    ("no-prompt", {"image": PNG_B64}, "prompt", "`prompt` is required"),
    ("n-high", {"image": PNG_B64, "prompt": "p", "n": 11}, "n", "must be an integer from 1 to 10, not 11"),
    (
        "strength",
        {"image": PNG_B64, "prompt": "p", "extras": {"strength": 2}},
        "extras.strength",
        "from 0 to 1",
    ),
    ("stream", {"image": PNG_B64, "prompt": "p", "stream": True}, "stream", "streaming is not supported"),
]


class TestRefused:
    @pytest.mark.parametrize(
        ("parts", "param", "says"), [c[1:] for c in BAD_FORMS], ids=[c[0] for c in BAD_FORMS]
    )
    async def test_a_wrong_form_is_a_400_no_provider_sees(
        self, edits: Edits, parts: list[tuple[str, bytes, str | None]], param: str, says: str
    ) -> None:
        answer = await edits.post(multipart(*parts), MULTIPART)
        assert answer.status == 400, answer.text
        error = answer.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", param)
        assert says in error["message"]
        assert edits.seen == []

    @pytest.mark.parametrize(
        ("fields", "param", "says"), [c[1:] for c in BAD_JSON], ids=[c[0] for c in BAD_JSON]
    )
    async def test_a_wrong_json_edit_is_a_400_no_provider_sees(
        self, edits: Edits, fields: dict[str, Any], param: str, says: str
    ) -> None:
        body = json.dumps({"model": EDIT_MODEL, **fields}).encode()
        answer = await edits.post(body, {**AUTH, "Content-Type": "application/json"})
        assert answer.status == 400, answer.text
        error = answer.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", param)
        assert says in error["message"]
        assert edits.seen == []

    async def test_the_sdk_raises_bad_request_for_a_missing_prompt(self, edits: Edits) -> None:
        async with edits.sdk() as client:
            with pytest.raises(openai.BadRequestError) as caught:
                await client.images.edit(model=EDIT_MODEL, image=("a.png", PNG, "image/png"), prompt="")
        assert caught.value.body == {
            "message": "`prompt` must be a non-empty string, not ''",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": None,
        }


# -- on the devnet: the simulator's image-editing provider (TEE-signed per image) ---------------------

DEVNET_EDIT_MODEL = "edit-r"
DEVNET_PRICE = 3_000_000_000
EDIT_PROVIDERS = (
    ProviderSpec(
        model=DEVNET_EDIT_MODEL,
        service_type="image-editing",
        output_price=DEVNET_PRICE,
        limits=RateLimits(requests_per_minute=600, burst=10, max_concurrent=5),
    ),
)


@pytest.fixture(scope="module")
async def edit_devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    async with Devnet(DevnetConfig(providers=EDIT_PROVIDERS, settle_interval=None), node_modules) as devnet:
        yield devnet


@pytest.fixture
async def devnet_edits(edit_devnet: Devnet) -> AsyncIterator[Edits]:
    _, key = await funded_wallet(edit_devnet)
    gateway_config = GatewayConfig(port=0, api_keys=(API_KEY,), shutdown_timeout=0.5)
    async with (
        Router(router_config(edit_devnet, key)) as router,
        Gateway(router, gateway_config) as gateway,
        aiohttp.ClientSession() as http,
    ):
        yield Edits(gateway.url, router, http)


class TestOnTheDevnet:
    async def test_an_sdk_edit_is_verified_picture_by_picture(
        self, devnet_edits: Edits, edit_devnet: Devnet
    ) -> None:
        """Through the broker's route: two pictures, billed as two images at the provider's price, and the
        TEE signature over each picture checks out."""
        async with devnet_edits.sdk() as client:
            raw = await client.images.with_raw_response.edit(
                model=DEVNET_EDIT_MODEL,
                image=("cat.png", PNG, "image/png"),
                prompt="add a hat",
                n=2,
                extra_headers={"x-zg-verify": "sync"},
            )
        assert len(raw.parse().data or []) == 2
        assert raw.headers["x-zg-provider"] == edit_devnet.providers[0].address
        assert raw.headers["x-zg-cost"] == str(2 * DEVNET_PRICE)
        assert raw.headers["x-zg-verifiability"] == "TeeML"
        assert raw.headers["x-zg-verify"] == "verified"

    async def test_a_json_edit_is_verified_too(self, devnet_edits: Edits) -> None:
        body = json.dumps({"model": DEVNET_EDIT_MODEL, "image": PNG_B64, "prompt": "add a hat"}).encode()
        headers = {**AUTH, "Content-Type": "application/json", "x-zg-verify": "sync"}
        answer = await devnet_edits.post(body, headers)
        assert answer.status == 200, answer.text
        assert len(answer.json()["data"]) == 1
        assert answer.headers["x-zg-cost"] == str(DEVNET_PRICE)
        assert answer.headers["x-zg-verify"] == "verified"
