"""Enqueue chat turns and read their results: the client side of turnq.

from producer import Client
client = Client.from_settings()
turn = client.enqueue("support-1", "alice", "What is the weather in Austin?")
done = client.wait(turn.id, timeout=60)
print(done.status, done.output)
"""

from producer.client import AsyncClient, Client, Turn, TurnResult

__all__ = ["AsyncClient", "Client", "Turn", "TurnResult"]
