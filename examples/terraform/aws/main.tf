# One EC2 instance per name, each with its own seeded user-data file made by
# ../make-userdata.sh aws NAME... just before `terraform apply`.
#
# Why for_each over per-instance files, and not `count = 3` with one user_data: every
# instance of a resource with one user_data string gets the same bytes, so all of them
# would credit the same seed as if it were their own secret: worse than no seed. The
# same holds for one launch template or one Auto Scaling group (seedtool launch aws
# refuses those for this reason).
#
# The state holds each instance's user-data (in clear text since AWS provider 6:
# terraform-provider-aws#42078), so it holds the seeds: they expire (--ttl) and each is
# credited only once (the guest's ledger), but keep the state private anyway.

terraform {
  required_version = ">= 1.3"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "ami_id" {
  type        = string
  description = "An image baked with `seedtool bake` (see ../../packer)."
}

variable "instances" {
  type        = set(string)
  description = "Instance names; each needs seeds/NAME.user-data from ../make-userdata.sh."
  default     = ["web-0", "web-1", "web-2"]
}

provider "aws" {
  region = var.region
}

locals {
  seed_files = { for name in var.instances : name => "${path.module}/seeds/${name}.user-data" }
}

resource "aws_instance" "vm" {
  for_each      = var.instances
  ami           = var.ami_id
  instance_type = "t3.small"

  user_data_base64 = fileexists(local.seed_files[each.key]) ? filebase64(local.seed_files[each.key]) : null

  # user-data is readable by anything that reaches the metadata service: IMDSv2 only,
  # and not from containers one hop further away
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tags = {
    Name = each.key
  }

  lifecycle {
    # a seed is for the instance's first boot; a new seed file later must not
    # replace or restart a running instance
    ignore_changes = [user_data_base64]
    precondition {
      condition     = fileexists(local.seed_files[each.key])
      error_message = "No seeded user-data for this instance: run ../make-userdata.sh aws ${each.key} first."
    }
  }
}

output "instance_ids" {
  value = { for name, vm in aws_instance.vm : name => vm.id }
}
