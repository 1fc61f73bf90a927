"""The homeserver proxy: every Matrix request to a tenant's homeserver passes through it.

The layers, in the order a request meets them:

1. **HTTP wall** (uvicorn protocol, wired by ``c3``): one valid Host, unambiguous framing,
   HTTP/1.x only, request heads capped in size and time.
2. **Dispatch** (``app``): the head checked again whatever server runs us, then the layers
   below called in turn; ``errors`` turns a refusal at any layer into a Matrix error.
3. **Resolve** (``routing``): the tenant by the ``/t/<slug>`` prefix or the exact Host, from
   the route table in Redis; a media path naming no tenant by its server name
   (``client_urls``).
4. **Guard** (``guard``, ``federation``): which paths may reach the homeserver; server-server
   traffic only for a tenant that federates; only active tenants.
5. **Limit** (``limits``, ``client_address``): the tenant's and the client's rate and
   concurrency.
6. **Wake** (``wake``): a sleeping homeserver is woken first (its requests held, one wake
   asked for); a refused connection asks for a restart through the same wake.
7. **Forward** (``forwarding``): headers filtered, the body received or streamed, the exchange
   with the homeserver relayed back.
8. **Meter** (``metering``, ``billable``, ``identity``): what the exchange bills, counted in
   memory and flushed as usage batches (``platform_core.usage_batch``).

The fast lane (``relay``) sits in the wall's protocol: a plain request of an awake tenant goes
through 3-6 and 8 called directly and is relayed without 2 and 7's ASGI and aiohttp machinery;
anything else is handed to the app.
"""
