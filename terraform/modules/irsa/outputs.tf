output "role_arns" {
  description = "IAM role ARN per service account: runner (read-write) and apps (read-only)."
  value       = { for k, r in aws_iam_role.this : local.roles[k].service_account => r.arn }
}
