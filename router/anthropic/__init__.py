"""Anthropic's Messages API (``POST /v1/messages``) over the 0G chatbot providers.

    validate.py   Anthropic's request shapes, checked before any provider sees them
    to_chat.py    a Messages request as a chat-completions request (the default path)
    from_chat.py  a chat completion as a Messages reply
    stream.py     a chat-completions stream as Anthropic's stream events (and a native stream's relay)
    errors.py     errors in Anthropic's shape, ours and the providers'
    route.py      the route: gateway key (``x-api-key`` or ``Authorization``), path, dispatch, receipts

A request is passed through unchanged (to the providers' ``/messages``) when every provider of its model
says it serves the Anthropic format, and translated to chat completions otherwise. Nothing is imported
here: ``router.core`` loads ``route`` when it builds its routes, and the translators stand alone.
"""
