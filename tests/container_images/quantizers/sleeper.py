"""Hostile: sleeps past the time limit."""

import time

print("sleeping", flush=True)
time.sleep(3600)
