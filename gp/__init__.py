"""Pure GlobalPlatform host library: APDUs, BER-TLV, SCP02/SCP03, keys, CAP files, card commands.

Sans-I/O: bytes in, bytes out. Nothing here imports Django, Celery, sockets or pyscard.
"""
