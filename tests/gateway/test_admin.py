import json
from router.config import GatewayConfig
from router.server.app import Gateway
from tests.gateway.conftest import API_KEY, ServeFactory
from tests.support import NEURON

ADMIN = "zg-admin-test-" + "0123456789abcdef" * 2


async def test_probe(serve: ServeFactory) -> None:
    served = await serve()
    async with Gateway(served.router, GatewayConfig(port=0, api_keys=(API_KEY,), admin_keys=(ADMIN,), shutdown_timeout=0.5)) as gw:
        h = {"Authorization": f"Bearer {ADMIN}"}
        out = {}
        for m, p, body in [("GET", "/admin/balance", None), ("GET", "/admin/providers", None),
                           ("POST", "/admin/fund", {"provider": served.devnet.providers[0].address, "amount": "100"}),
                           ("POST", "/admin/fund", {"provider": "0x" + "11" * 20, "amount": "1"}),
                           ("POST", "/admin/refund", {"providers": [served.devnet.providers[1].address]}),
                           ("GET", "/admin/balance", None),
                           ("POST", "/admin/fund", {"provider": served.devnet.providers[0].address, "amount": "0.5"}),
                           ]:
            async with served.http.request(m, gw.url + p, json=body, headers=h) as r:
                out[f"{m} {p} {body}"] = (r.status, await r.json())
        open("/tmp/probe/out.json", "w").write(json.dumps(out, indent=1))
