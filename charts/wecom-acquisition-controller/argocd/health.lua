-- ArgoCD health check for AcquisitionLink and WeComApp (acquisition.wecom.dev/v1alpha1).
-- Lua 5.1 (ArgoCD runs gopher-lua). Install it under both keys of argocd-cm:
--   resource.customizations.health.acquisition.wecom.dev_AcquisitionLink
--   resource.customizations.health.acquisition.wecom.dev_WeComApp
--
--   Progressing  being deleted; generation not yet observed; creating; retrying;
--                a link deleted in WeCom that the controller recreates
--   Suspended    annotation acquisition.wecom.dev/paused: "true", or reason Paused
--   Healthy      Ready=True and status.observedGeneration == metadata.generation
--   Degraded     a terminal reason: the controller waits for a spec change (or, for
--                QuotaExhausted, for new quota) instead of retrying

local TERMINAL_REASONS = {
  InvalidSpec = true,
  PermissionDenied = true,
  CreateIncomplete = true,
  QuotaExhausted = true,
}

local function find_condition(status, condition_type)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, condition in ipairs(status.conditions) do
    if condition.type == condition_type then
      return condition
    end
  end
  return nil
end

local function describe(condition)
  local reason = condition.reason or condition.type or "Unknown"
  if condition.message ~= nil and condition.message ~= "" then
    return reason .. ": " .. condition.message
  end
  return reason
end

-- A condition is terminal when it is False with a terminal reason. RemoteDeleted is
-- terminal only with onRemoteDelete: Orphan; with Recreate a new link is on its way.
local function is_terminal(condition, spec)
  if condition == nil or condition.status ~= "False" or condition.reason == nil then
    return false
  end
  if TERMINAL_REASONS[condition.reason] then
    return true
  end
  if condition.reason == "RemoteDeleted" then
    return spec ~= nil and spec.onRemoteDelete == "Orphan"
  end
  return false
end

local function health(obj)
  local metadata = obj.metadata or {}
  local status = obj.status
  local ready = find_condition(status, "Ready")
  local synced = find_condition(status, "Synced")

  if metadata.deletionTimestamp ~= nil then
    local message = "Deleting: waiting for the controller to release the WeCom link"
    if ready ~= nil and ready.reason == "Deleting" and ready.message ~= nil and ready.message ~= "" then
      message = describe(ready)
    end
    return "Progressing", message
  end

  local annotations = metadata.annotations or {}
  if annotations["acquisition.wecom.dev/paused"] == "true" then
    return "Suspended", "Paused by annotation acquisition.wecom.dev/paused: no writes to WeCom"
  end
  -- Ready may be missing: a table with a nil hole would stop ipairs early.
  local reported = {}
  if ready ~= nil then
    table.insert(reported, ready)
  end
  if synced ~= nil then
    table.insert(reported, synced)
  end
  for _, condition in ipairs(reported) do
    if condition.reason == "Paused" then
      return "Suspended", describe(condition)
    end
  end

  if status == nil then
    return "Progressing", "Waiting for the controller to report status"
  end
  local observed = status.observedGeneration
  if observed == nil and ready ~= nil then
    observed = ready.observedGeneration
  end
  if metadata.generation ~= nil and (observed == nil or observed < metadata.generation) then
    return "Progressing", "Waiting for the controller to observe generation "
      .. tostring(metadata.generation)
  end

  if ready == nil then
    return "Progressing", "Waiting for the Ready condition"
  end

  if ready.status == "True" then
    -- An app whose quota is gone cannot create links, however Ready it is.
    local exhausted = find_condition(status, "QuotaExhausted")
    if obj.kind == "WeComApp" and exhausted ~= nil and exhausted.status == "True" then
      return "Degraded", describe(exhausted)
    end
    return "Healthy", describe(ready)
  end

  for _, condition in ipairs(reported) do
    if is_terminal(condition, obj.spec) then
      return "Degraded", describe(condition)
    end
  end
  if ready.reason == nil then
    return "Progressing", "Waiting for the Ready condition"
  end
  return "Progressing", describe(ready)
end

local hs = {}
hs.status, hs.message = health(obj)
return hs
