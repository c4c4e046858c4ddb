"""The MQTT export: see docs/streams.md. (Filled in below in a later commit.)"""
