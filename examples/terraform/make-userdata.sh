#!/bin/sh
# Make one seeded user-data file per instance, right before `terraform apply`:
#
#   ./make-userdata.sh aws web-0 web-1 web-2     (then: cd aws && terraform apply)
#   ./make-userdata.sh gce web-0 web-1 web-2
#
# Each file holds its own fresh seed, signed with your seedtool key (SEEDTOOL_KEY or
# ~/.config/seedtool/signing.key). Seeds expire (1 h by default, --ttl), so make them
# just before applying, and delete seeds/ afterwards: the files are secrets until used.
set -eu

cloud=${1:?usage: make-userdata.sh aws|gce NAME...}
shift
here=$(cd "$(dirname "$0")" && pwd)
user_data="$here/../userdata/cloud-config.yaml"
out="$here/$cloud/seeds"
umask 077
mkdir -p "$out"

for name in "$@"; do
  seedtool userdata --in "$user_data" --target "$cloud" -o "$out/$name.user-data"
done
