-- ArgoCD health check for AcquisitionLink and WeComApp (acquisition.wecom.dev/v1alpha1).
-- Lua 5.1 (ArgoCD runs gopher-lua). Install it under both keys of argocd-cm:
--   resource.customizations.health.acquisition.wecom.dev_AcquisitionLink
--   resource.customizations.health.acquisition.wecom.dev_WeComApp
--
--   Progressing  being deleted (also while a pause blocks the deletion); no status yet;
--                the current generation not yet observed, or Ready only for an older one;
--                creating; retrying (RetryableError); resuming after the pause ended
--   Suspended    annotation acquisition.wecom.dev/paused: "true"
--   Healthy      Ready=True for the current generation (status.observedGeneration ==
--                metadata.generation); a WeComApp also needs QuotaExhausted not True
--   Degraded     Ready=False with a reason the controller does not get past by retrying:
--                it waits for a change of the spec, the WeComApp, its Secret, WeCom or
--                the quota (InvalidSpec, PermissionDenied, WeComError, RemoteDeleted,
--                LinkNotFound, LinkIdConflict, CreateIncomplete, QuotaExhausted, AppNotReady; for a WeComApp
--                SecretNotFound, CredentialsInvalid, PermissionDenied, IpNotAllowed, BadAnswer,
--                or QuotaExhausted=True)

local PAUSED_ANNOTATION = "acquisition.wecom.dev/paused"

-- The controller writes RemoteDeleted only when it will not recreate the link
-- (onRemoteDelete: Orphan, or an adopted link), and LinkNotFound when spec.linkId names a
-- link the app's corp does not have. AppNotReady on Ready means no link exists
-- yet and the WeComApp is missing, or (link or not) WeCom refuses the app: nothing in
-- the link fixes that.
local DEGRADED_REASONS = {
  InvalidSpec = true,
  PermissionDenied = true,
  WeComError = true,
  RemoteDeleted = true,
  LinkNotFound = true,
  CreateIncomplete = true,
  QuotaExhausted = true,
  AppNotReady = true,
  LinkIdConflict = true,
  SecretNotFound = true,
  CredentialsInvalid = true,
  IpNotAllowed = true,
  BadAnswer = true,
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

-- A condition written for the current generation (or one that does not say).
local function is_current(condition, generation)
  return condition.observedGeneration == nil
    or generation == nil
    or condition.observedGeneration >= generation
end

local function is_degraded(condition, generation)
  return condition ~= nil
    and condition.status == "False"
    and condition.reason ~= nil
    and DEGRADED_REASONS[condition.reason] == true
    and is_current(condition, generation)
end

local function health(obj)
  local metadata = obj.metadata or {}
  local annotations = metadata.annotations or {}
  local paused = annotations[PAUSED_ANNOTATION] == "true"
  local generation = metadata.generation
  local status = obj.status
  local ready = find_condition(status, "Ready")
  local synced = find_condition(status, "Synced")

  if metadata.deletionTimestamp ~= nil then
    if paused then
      return "Progressing", "Deleting: blocked by annotation " .. PAUSED_ANNOTATION
        .. ": \"true\"; remove it to let the controller delete the WeCom link"
    end
    return "Progressing", "Deleting: waiting for the controller to release the WeCom link"
  end

  if paused then
    return "Suspended", "Paused by annotation " .. PAUSED_ANNOTATION .. ": no writes to WeCom"
  end

  if status == nil then
    return "Progressing", "Waiting for the controller to report status"
  end
  local observed = status.observedGeneration
  if observed == nil and ready ~= nil then
    observed = ready.observedGeneration
  end
  if generation ~= nil and (observed == nil or observed < generation) then
    -- A pass saw the new generation but WeCom has not taken it yet (a retryable failure:
    -- the controller leaves observedGeneration behind until it has).
    if synced ~= nil and synced.status == "False" and is_current(synced, generation) then
      return "Progressing", "Waiting for the controller to apply generation " .. tostring(generation) .. "; " .. describe(synced)
    end
    return "Progressing", "Waiting for the controller to observe generation " .. tostring(generation)
  end

  if ready == nil then
    -- A first create that failed and is retried reports Synced only.
    if synced ~= nil and synced.reason ~= nil then
      return "Progressing", describe(synced)
    end
    return "Progressing", "Waiting for the Ready condition"
  end

  if ready.status == "True" then
    if not is_current(ready, generation) then
      -- The spec changed and the pass that saw it did not get to WeCom (e.g. it is retrying).
      local message = "Waiting for the controller to apply generation " .. tostring(generation)
      if synced ~= nil and synced.status == "False" and is_current(synced, generation) then
        message = message .. "; " .. describe(synced)
      end
      return "Progressing", message
    end
    -- An app whose quota is gone cannot create links, however Ready it is.
    local exhausted = find_condition(status, "QuotaExhausted")
    if obj.kind == "WeComApp" and exhausted ~= nil and exhausted.status == "True" then
      return "Degraded", "QuotaExhausted: " .. (exhausted.message or "no acquisition quota left")
    end
    return "Healthy", describe(ready)
  end

  if is_degraded(ready, generation) then
    return "Degraded", describe(ready)
  end
  if is_degraded(synced, generation) then
    return "Degraded", describe(synced)
  end
  if ready.reason == "Paused" then
    return "Progressing", "Resuming: annotation " .. PAUSED_ANNOTATION
      .. " is gone; waiting for the controller's next pass"
  end
  -- Ready may describe an older generation; Synced then says what this one is doing.
  if not is_current(ready, generation) and synced ~= nil and synced.status == "False"
    and is_current(synced, generation) then
    return "Progressing", describe(synced)
  end
  if ready.reason == nil then
    return "Progressing", "Waiting for the Ready condition"
  end
  return "Progressing", describe(ready)
end

local hs = {}
hs.status, hs.message = health(obj)
return hs
