# One Compute Engine VM per name, each with its own seeded user-data file made by
# ../make-userdata.sh gce NAME... just before `terraform apply`.
#
# Why for_each over per-instance files, and not `count` with one metadata value: every
# VM would get the same user-data and credit the same seed as its own secret (worse
# than none). The same holds for instance templates, managed instance groups and
# bulkInsert, which all share metadata.
#
# The state holds each VM's metadata, so it holds the seeds: they expire (--ttl) and
# each is credited only once (the guest's ledger), but keep the state private anyway.
# `seedtool launch gce --scrub-after-boot` can also remove the seed from the metadata
# server once the guest has used it; Terraform would then see a change, which
# ignore_changes below tolerates.

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

variable "zone" {
  type    = string
  default = "europe-west1-b"
}

variable "image" {
  type        = string
  description = "An image baked with `seedtool bake`, e.g. projects/P/global/images/family/debian-12-seedtool."
}

variable "instances" {
  type        = set(string)
  description = "VM names; each needs seeds/NAME.user-data from ../make-userdata.sh."
  default     = ["web-0", "web-1", "web-2"]
}

provider "google" {
  project = var.project
  zone    = var.zone
}

locals {
  seed_files = { for name in var.instances : name => "${path.module}/seeds/${name}.user-data" }
}

resource "google_compute_instance" "vm" {
  for_each     = var.instances
  name         = each.key
  machine_type = "e2-small"

  boot_disk {
    initialize_params {
      image = var.image
    }
  }

  network_interface {
    network = "default"
  }

  metadata = {
    # cloud-init's GCE datasource reads `user-data`; gzip output is base64 and says so
    user-data          = fileexists(local.seed_files[each.key]) ? filebase64(local.seed_files[each.key]) : ""
    user-data-encoding = "base64"
    # lets the guest report that it used its seed (see seedtool launch gce)
    enable-guest-attributes = "TRUE"
  }

  lifecycle {
    ignore_changes = [metadata["user-data"]]
    precondition {
      condition     = fileexists(local.seed_files[each.key])
      error_message = "No seeded user-data for this VM: run ../make-userdata.sh gce ${each.key} first."
    }
  }
}

output "instance_ids" {
  value = { for name, vm in google_compute_instance.vm : name => vm.instance_id }
}
