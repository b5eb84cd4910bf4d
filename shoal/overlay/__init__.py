"""VXLAN overlay networks with pyroute2: bridges, vxlan devices, veths, static peers."""
