"""The bounds on everything that crosses a trust boundary, in one place.

A device is hostile to the controller and to other devices, a component is hostile to the
agent: every document, report and line either side accepts has a size and a count it may
not pass. The numbers are chosen so that the largest legitimate fleet object fits with
room, and so that a document is always smaller than the broker's packet limit (a packet
over the limit makes mosquitto drop the *publisher's* session, and paho resends it on
every reconnect: one oversized document would cut the controller off for good).
"""

from __future__ import annotations

from typing import Final

KIB: Final = 1024
MIB: Final = 1024 * KIB

# The cloud broker's max_packet_size (rendered by `hedgerow broker config`). Everything the
# controller or a device publishes, envelope included, stays below it.
BROKER_MAX_PACKET_BYTES: Final = 1 * MIB

# A DesiredState document (the canonical JSON the revision is computed over). The signed
# envelope around it adds a base64 copy (4/3) and a few hundred bytes: 256 KiB of
# document is < 360 KiB on the wire, well below BROKER_MAX_PACKET_BYTES.
MAX_DESIRED_BYTES: Final = 256 * KIB

# A StatusReport as published by a device, and the CoreDevice status built from it
# (the architecture asks ≤ 2 KB for the status of a typical device; the bound is for a
# hostile or very large one).
MAX_REPORT_BYTES: Final = 64 * KIB
MAX_REPORT_COMPONENTS: Final = 256
MAX_REPORT_TEXT: Final = 256  # agentVersion, platform fields, component names/versions
MAX_REPORT_REASON: Final = 1024  # outcome reasons, errors

# Reports accepted per device: a burst, then one per REPORT_INTERVAL_SECONDS on average.
REPORT_BURST: Final = 10
REPORT_INTERVAL_SECONDS: Final = 1.0

# One log line of a component (longer lines are split), and what a component may write
# to its log per second on average before lines are dropped (and the drop is logged).
MAX_LOG_LINE_BYTES: Final = 16 * KIB

# Deployment outcomes (and local deployment requests) a device keeps in
# state/deployments.json: the oldest go first.
MAX_HISTORY_ENTRIES: Final = 20

# The log writer runs as root outside the component's cgroup, and its disk is shared:
# a burst of a MiB (a quarter of what rotation keeps), then 64 KiB/s on average.
LOG_BYTES_PER_SECOND: Final = 64 * KIB
LOG_BURST_BYTES: Final = 1 * MIB

# Component IPC (AWS event-stream RPC on ipc/ipc.sock). awscrt caps a message at 16 MiB and
# its headers at 128 KiB; a component is hostile to the agent, and each connection may
# hold one partial frame in the agent's memory, so the agent accepts less: 2 MiB fits the
# largest message a component legitimately sends — a 1 MiB binary pub/sub message
# (BROKER_MAX_PACKET_BYTES: nothing larger could reach the cloud either) base64-encoded
# in its JSON (4/3) plus headers — while 10 clients mid-frame cost at most 20 MiB, not 160.
MAX_IPC_MESSAGE_BYTES: Final = 2 * MIB
MAX_IPC_HEADERS_BYTES: Final = 128 * KIB
# Connections the IPC server holds at once, and streams (subscriptions) per connection.
MAX_IPC_CONNECTIONS: Final = 256
MAX_IPC_STREAMS_PER_CONNECTION: Final = 512
# Messages queued for one subscriber before new ones are dropped (and counted), and how
# long a subscriber may stay full before it is disconnected.
IPC_SUBSCRIBER_QUEUE: Final = 1024
IPC_SUBSCRIBER_STUCK_SECONDS: Final = 10.0
# Bytes queued towards one connection (the socket's write buffer) before it counts as full.
IPC_WRITE_BUFFER_BYTES: Final = 4 * MIB
# A connection must send its connect message within this many seconds.
IPC_CONNECT_TIMEOUT_SECONDS: Final = 10.0

# Components' cloud publishes waiting for the broker (state/cloud-spool/, one file each):
# the spool's bounds in messages and bytes. 16 MiB lets an outage of an hour keep a
# 4 KiB reading every second; 4096 files stay quick to list at start.
CLOUD_SPOOL_MAX_MESSAGES: Final = 4096
CLOUD_SPOOL_MAX_BYTES: Final = 16 * MIB
# QoS 1 cloud publishes of components in flight at once (sent, PUBACK not yet back):
# enough to keep a slow link busy, few enough that a reconnect resends little.
CLOUD_MAX_INFLIGHT: Final = 32
# What one component may change of its own configuration over IPC (UpdateConfiguration),
# kept in the agent's state and rewritten with every update: the configuration the
# deployment gives it is bounded by the desired document, this by itself.
MAX_OWN_CONFIGURATION_BYTES: Final = 64 * KIB
# Keys of its own configuration change a component's report lists (the rest is cut).
MAX_REPORT_OWN_KEYS: Final = 16
