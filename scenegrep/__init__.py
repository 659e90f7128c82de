"""scenegrep: semantic search across 3D scans."""
