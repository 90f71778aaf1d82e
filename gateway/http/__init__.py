"""The gateway's HTTP face: the agent listener's middleware chain, the admin listener, and how both are served."""
