"""State that several replicas of one deployment share through Redis (``[shared] redis_url``).

``SharedStore`` (``store.py``) is a replica's connection and its mode (shared, or local while Redis is
unreachable); ``RedisCapacity`` (``capacity.py``) counts every lane's limits across replicas, at 1/N of
each lane while local; ``Leadership`` (``leader.py``) elects the one replica that moves money;
``SharedBook`` (``book.py``) shares spend, settlements, holds and the leader's balances. Without a Redis
URL none of them is imported (nor redis-py): ``options.py`` alone is what the config needs.
"""
