"""Serving beyond one process: Triton Inference Server model repositories and a client.

It builds on the runtime (`segexport.runtime`), which never imports it. Triton's
`ModelConfig` protobuf comes from the optional `tritonclient[grpc]` package
(`pip install 'segexport[triton]'`), imported only when a repository is written or checked.
"""
