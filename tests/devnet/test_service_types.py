"""``zg-router devnet --service-type`` and ``make demo``: one provider of each kind, and every gateway
route answering on the demo as a user reaches it (the openai and anthropic SDKs over HTTP)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shlex
from pathlib import Path

import anthropic
import openai
import pytest

from router.cli import DEVNET_SERVICE_TYPES, _parser
from router.devnet import ProviderSpec
from router.devnet.command import devnet_config
from router.devnet.node_tools import NodeModules
from router.devnet.simulator.spec import SERVICE_TYPES
from router.errors import ConfigError
from tests.devnet.test_cli import read_until, stop, zg_router
from tests.gateway.support import REPO, TIMEOUT, WAV

PICTURE = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
DEMO = {
    "chatbot": "demo-chat",
    "embedding": "demo-embedding",
    "text-to-image": "demo-text-to-image",
    "image-editing": "demo-image-editing",
    "speech-to-text": "demo-speech-to-text",
}


def demo_flags() -> list[str]:
    """The providers ``make demo`` asks for: the Makefile's ``DEMO_PROVIDERS``, continuations joined."""
    makefile = (REPO / "Makefile").read_text()
    match = re.search(r"^DEMO_PROVIDERS := ((?:.*\\\n)*.*)$", makefile, re.MULTILINE)
    assert match is not None, "no DEMO_PROVIDERS in the Makefile"
    return shlex.split(match[1].replace("\\\n", " "))


class TestServiceTypeFlag:
    def test_the_cli_knows_the_simulators_service_types(self) -> None:
        """The CLI spells the list out (to stay light); it must be the simulator's."""
        assert DEVNET_SERVICE_TYPES == SERVICE_TYPES

    def test_service_types_are_cycled_across_providers_as_models_are(self) -> None:
        flags = "--providers 5 --service-type chatbot --service-type embedding --model a --model b --model c"
        config = devnet_config(_parser().parse_args(["devnet", *flags.split()]))
        assert [(p.service_type, p.model) for p in config.providers] == [
            ("chatbot", "a"),
            ("embedding", "b"),
            ("chatbot", "c"),
            ("embedding", "a"),
            ("chatbot", "b"),
        ]
        assert {p.service_type for p in devnet_config(_parser().parse_args(["devnet"])).providers} == {
            "chatbot"
        }

    def test_an_unknown_service_type_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exited:
            _parser().parse_args(["devnet", "--service-type", "video"])
        assert exited.value.code == 2
        errors = capsys.readouterr().err
        assert "argument --service-type: invalid choice: 'video'" in errors
        assert "image-editing" in errors

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            (
                {"service_type": "video"},
                "unknown service type 'video'; a simulated provider is one of chatbot",
            ),
            (
                {"service_type": "embedding", "anthropic": True},
                "only a chatbot serves the Anthropic format, not a embedding",
            ),
        ],
    )
    def test_a_spec_the_simulator_cannot_serve_is_a_config_error(
        self, fields: dict[str, object], message: str
    ) -> None:
        with pytest.raises(ConfigError, match=re.escape(message)):
            ProviderSpec(**fields)  # type: ignore[arg-type]


class TestDemo:
    def test_make_demo_starts_one_provider_of_each_kind_named_for_it(self) -> None:
        config = devnet_config(_parser().parse_args(["devnet", *demo_flags()]))
        assert {p.service_type: p.model for p in config.providers} == DEMO
        assert len(config.providers) == len(SERVICE_TYPES)

    async def test_every_route_answers_on_the_demo(self, node_modules: NodeModules) -> None:
        """``make demo``'s devnet behind the gateway: chat, Anthropic messages, embeddings, image
        generation and editing, transcription and the model list, each through its SDK over HTTP."""
        async with zg_router(node_modules, "devnet", "--serve", "--json", *demo_flags()) as process:
            assert process.stdout is not None
            summary = json.loads(await read_until(process.stdout, b'"gateway"'))
            assert {p["service_type"]: p["model"] for p in summary["providers"]} == DEMO
            url, key = summary["gateway"]["url"], summary["gateway"]["api_key"]
            async with (
                asyncio.timeout(TIMEOUT),
                openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0) as sdk,
            ):
                chat = await sdk.chat.completions.create(
                    model="demo-chat", messages=[{"role": "user", "content": "hi"}]
                )
                assert chat.choices[0].message.content
                vectors = await sdk.embeddings.create(model="demo-embedding", input=["one", "two"])
                assert len(vectors.data) == 2
                made = await sdk.images.generate(model="demo-text-to-image", prompt="a boat", n=2)
                assert len(made.data or []) == 2
                edited = await sdk.images.edit(
                    model="demo-image-editing", image=("boat.png", PICTURE, "image/png"), prompt="add a sail"
                )
                assert base64.b64decode((edited.data or [])[0].b64_json or "")
                heard = await sdk.audio.transcriptions.create(
                    model="demo-speech-to-text", file=("a.wav", WAV)
                )
                assert heard.text
                listed = {model.id async for model in sdk.models.list()}
                assert listed >= set(DEMO.values())
            async with (
                asyncio.timeout(TIMEOUT),
                anthropic.AsyncAnthropic(
                    base_url=url.removesuffix("/v1"), api_key=key, max_retries=0
                ) as claude,
            ):
                message = await claude.messages.create(
                    model="demo-chat", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
                )
                assert message.content[0].type == "text"
                assert message.stop_reason == "end_turn"
            await stop(process, group=True)
            assert process.returncode == 0


def test_demo_flags_are_what_the_makefile_runs() -> None:
    """``make demo`` passes DEMO_PROVIDERS to ``zg-router devnet --serve``."""
    makefile = (Path(REPO) / "Makefile").read_text()
    recipe = makefile.split("\ndemo: setup\n", 1)[1].split("\n\n", 1)[0]
    assert recipe.strip() == "$(BIN)/zg-router devnet --serve --gateway-port 8080 $(DEMO_PROVIDERS)"
