"""hedgerow.streams: the stream manager (`python -m hedgerow.streams serve`), a built-in
component speaking the Greengrass Stream Manager SDK's protocol. A shell over
`hedgerow.core.streams`; kept light (no agent, docker, paho or awscrt: the MQTT export
goes through the agent over IPC with a small client of its own) because it runs as its
own process on small devices."""

import os as _os

# As in hedgerow.core: src/hedgerow/streams is a symlink to streams/; tracebacks name the
# real files.
__path__[:] = [_os.path.realpath(p) for p in __path__]
