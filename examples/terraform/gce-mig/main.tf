# A Compute Engine managed instance group whose VMs all get a fresh seed of their own
# from seedtool's seed servers at first boot, although they share one instance
# template and one metadata.
#
# Nothing here is per VM. The image (var.image) was baked with
#
#   seedtool bake --root / --trusted-key seed-server.pub \
#       --seed-server https://seed-a.example.internal/ \
#       --seed-server https://seed-b.example.internal/ \
#       --seed-server-ca seed-server-ca.pem --seed-server-identity gce-iit
#
# (see ../../packer and docs/seedserver.md). At boot each VM asks its metadata server
# for an identity token (format=full) whose audience is each server's URL exactly as
# baked, and each server checks it (`--identity gce-iit:projects=...,audience=URL`)
# and answers with an envelope bound to that VM and a fresh nonce.
#
# The template's metadata is the same for every VM, so it must never hold a seed
# (`seedtool userdata` output): `user-data` is plain cloud-config here.

terraform {
  required_version = ">= 1.3"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

variable "project" {
  type = string
}

variable "region" {
  type    = string
  default = "europe-west1"
}

variable "image" {
  type        = string
  description = "An image baked with `seedtool bake --seed-server ...`, e.g. projects/P/global/images/family/debian-12-seedtool."
}

variable "network" {
  type    = string
  default = "default"
}

variable "service_account_email" {
  type        = string
  description = "The VMs' service account: the identity token is served under instance/service-accounts/default/."
}

variable "seed_server_ranges" {
  type        = list(string)
  description = "The seed servers' addresses (CIDR ranges), which listen on 443."
}

variable "seed_server_tag" {
  type        = string
  default     = "seedtool-seed-server"
  description = "The network tag of the seed server VMs (in the same network)."
}

provider "google" {
  project = var.project
  region  = var.region
}

resource "google_compute_instance_template" "fleet" {
  name_prefix  = "seedtool-fleet-"
  machine_type = "e2-small"
  tags         = ["seedtool-fleet"]

  disk {
    source_image = var.image
    boot         = true
    auto_delete  = true
  }

  network_interface {
    network = var.network
  }

  service_account {
    email  = var.service_account_email
    scopes = ["cloud-platform"]
  }

  metadata = {
    # shared by every VM: no seed in it (a seed here would be every VM's)
    user-data = file("${path.module}/../../userdata/cloud-config.yaml")
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_compute_region_instance_group_manager" "fleet" {
  name               = "seedtool-fleet"
  base_instance_name = "seedtool-fleet"
  region             = var.region
  target_size        = 2

  version {
    instance_template = google_compute_instance_template.fleet.id
  }

  # a new template replaces VMs gradually; each new VM asks the seed servers for its
  # own seed at its first boot
  update_policy {
    type                  = "PROACTIVE"
    minimal_action        = "REPLACE"
    max_surge_fixed       = 3
    max_unavailable_fixed = 0
  }
}

# The VMs may open HTTPS connections to the seed servers. The network's implied rule
# already allows all egress; this rule matters where a deny-egress rule of lower
# priority number exists, and documents the path. Priority 900 comes before the
# default 1000.
resource "google_compute_firewall" "fleet_to_seed_servers" {
  name               = "seedtool-fleet-to-seed-servers"
  network            = var.network
  direction          = "EGRESS"
  priority           = 900
  target_tags        = ["seedtool-fleet"]
  destination_ranges = var.seed_server_ranges

  allow {
    protocol = "tcp"
    ports    = ["443"]
  }
}

# and the seed servers accept them (ingress is denied unless a rule allows it)
resource "google_compute_firewall" "seed_servers_from_fleet" {
  name        = "seedtool-seed-servers-from-fleet"
  network     = var.network
  direction   = "INGRESS"
  target_tags = [var.seed_server_tag]
  source_tags = ["seedtool-fleet"]

  allow {
    protocol = "tcp"
    ports    = ["443"]
  }
}

output "instance_group" {
  value = google_compute_region_instance_group_manager.fleet.instance_group
}
