#!/usr/bin/env bash
# Regenerates Sources/Wire/Generated/*.pb.swift from the .proto files beside this script.
# Needs protoc (Debian: protobuf-compiler) and protoc-gen-swift built from swift-protobuf at the version Package.swift
# names; set PROTOC_GEN_SWIFT to its path, or this script builds it once under .build-protoc-gen-swift/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="$here/../Generated"
command -v protoc >/dev/null || { echo "protoc missing: apt-get install protobuf-compiler" >&2; exit 1; }
plugin="${PROTOC_GEN_SWIFT:-}"
if [ -z "$plugin" ]; then
    version="$(grep -o 'swift-protobuf.git", exact: "[0-9.]*' "$root/Package.swift" | grep -o '[0-9.]*$')"
    src="$root/.build-protoc-gen-swift/swift-protobuf"
    if [ ! -d "$src" ]; then
        git clone -q --depth 1 -b "$version" https://github.com/apple/swift-protobuf.git "$src"
    fi
    (cd "$src" && swift build -c release --product protoc-gen-swift >&2)
    plugin="$src/.build/release/protoc-gen-swift"
fi
rm -f "$out"/*.pb.swift
protoc --plugin=protoc-gen-swift="$plugin" --proto_path="$here" --swift_out="$out" \
    --swift_opt=Visibility=Public --swift_opt=FileNaming=DropPath "$here"/*.proto
echo "generated: $(ls "$out")"
