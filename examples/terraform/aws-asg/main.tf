# An EC2 Auto Scaling group whose instances all get a fresh seed of their own from
# seedtool's seed servers at first boot, although they share one launch template and
# one user-data.
#
# Nothing here is per instance. The image (var.ami_id) was baked with
#
#   seedtool bake --root / --trusted-key seed-server.pub \
#       --seed-server https://seed-a.example.internal/ \
#       --seed-server https://seed-b.example.internal/ \
#       --seed-server-ca seed-server-ca.pem --seed-server-identity aws-iid
#
# (see ../../packer and docs/seedserver.md), so it carries the servers' URLs, the CA
# it pins and the evidence it presents. At boot each instance sends its instance
# identity document and its rsa2048 signature, read from IMDSv2, with a fresh nonce;
# each server checks them (`--identity aws-iid:accounts=...`) and answers with an
# envelope bound to that instance and that nonce.
#
# The launch template's user_data is the same for every instance, so it must never
# hold a seed (`seedtool userdata` output): it is plain cloud-config here.

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
  description = "An AMI baked with `seedtool bake --seed-server ...` (see ../../packer)."
}

variable "vpc_id" {
  type = string
}

variable "subnet_ids" {
  type        = list(string)
  description = "The group's subnets, one per Availability Zone."
}

variable "seed_server_security_group_id" {
  type        = string
  description = "The security group of the seed servers (in the same VPC), which listen on 443."
}

provider "aws" {
  region = var.region
}

# The instances may open HTTPS connections to the seed servers, and the seed servers
# accept them. A security group made by Terraform starts with no egress rule at all
# (the AWS provider removes the default allow-all one), so add the other egress rules
# your instances need (package mirrors, your own services) beside this one.
resource "aws_security_group" "fleet" {
  name_prefix = "seedtool-fleet-"
  description = "Instances that ask seedtool's seed servers for a seed at boot"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_egress_rule" "to_seed_servers" {
  security_group_id            = aws_security_group.fleet.id
  description                  = "HTTPS to the seed servers"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = var.seed_server_security_group_id
}

resource "aws_vpc_security_group_ingress_rule" "seed_servers_from_fleet" {
  security_group_id            = var.seed_server_security_group_id
  description                  = "HTTPS from the fleet"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = aws_security_group.fleet.id
}

resource "aws_launch_template" "fleet" {
  name_prefix            = "seedtool-fleet-"
  image_id               = var.ami_id
  instance_type          = "t3.small"
  vpc_security_group_ids = [aws_security_group.fleet.id]

  # shared by every instance: no seed in it (a seed here would be every instance's)
  user_data = filebase64("${path.module}/../../userdata/cloud-config.yaml")

  # The guest reads its identity document with an IMDSv2 session token; a hop limit
  # of 1 keeps containers one network hop further away from IMDS.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tag_specifications {
    resource_type = "instance"
    tags = {
      Name = "seedtool-fleet"
    }
  }
}

resource "aws_autoscaling_group" "fleet" {
  name_prefix         = "seedtool-fleet-"
  vpc_zone_identifier = var.subnet_ids
  min_size            = 2
  max_size            = 6
  desired_capacity    = 2

  launch_template {
    id      = aws_launch_template.fleet.id
    version = aws_launch_template.fleet.latest_version
  }

  # a new image or template version replaces instances gradually; each new instance
  # asks the seed servers for its own seed at its first boot
  instance_refresh {
    strategy = "Rolling"
  }
}

output "autoscaling_group" {
  value = aws_autoscaling_group.fleet.name
}
