//! Container images: import (OCI layout, docker-archive), list, remove; layers unpacked once and shared.
