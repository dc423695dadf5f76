"""The shadow git store's parts, one job each; `agentguard.snapshots` is the public import point.

gitenv     how git runs on the store: a scrubbed environment, the store's config, errors
model      what snapshots, diffs and restores return
worktree   looking at the project folder without running git on the user's repository
refs       writing the store's refs (and their reflogs) cheaply
restoring  what a restore must leave alone or copy aside
"""
