// What the control plane's managed identity may do in the subscription that holds the
// workspaces' managed resource groups (deployed by main.bicep at subscription scope).
//
// Why not Contributor: Contributor could also read every storage account's keys, change any
// resource in the subscription, and it still could not create the role assignment the workspace
// template makes. The custom role below holds what the ARM provisioner does and nothing else:
// create, tag and delete resource groups; run deployments; create, resize and delete the
// resources of infra/templates (VNet, NSG, NAT gateway and its IP, NICs, VMs, scale sets,
// disks, storage accounts without their keys, the nodes' user-assigned identity).
// It has to be granted at subscription scope: the managed groups are created at run time, and
// whoever creates a group gets no rights in it by doing so. Use a subscription of its own for
// the workspaces (as Azure Databricks' managed groups are isolated): this identity can manage
// compute and networking throughout the subscription it is granted.
targetScope = 'subscription'

@description('Principal (object) id of the function app\'s system-assigned managed identity.')
param principalId string

@description('Distinguishes this platform\'s custom role from another deployment\'s in the same tenant (role names are unique per tenant).')
param platformName string

var rbacAdministrator = 'f58310d9-a9f6-439a-9e8d-f62e7b41a168'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

// The one role assignment workspace.json makes: Storage Blob Data Contributor for the nodes'
// identity on the workspace storage account. The condition confines the delegation to exactly
// that role, given to a service principal (a managed identity), created or deleted.
var delegationCondition = '((!(ActionMatches{\'Microsoft.Authorization/roleAssignments/write\'})) OR (@Request[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {${storageBlobDataContributor}} AND @Request[Microsoft.Authorization/roleAssignments:PrincipalType] ForAnyOfAnyValues:StringEqualsIgnoreCase {\'ServicePrincipal\'})) AND ((!(ActionMatches{\'Microsoft.Authorization/roleAssignments/delete\'})) OR (@Resource[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {${storageBlobDataContributor}}))'

resource provisionerRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, 'sparkplane-workspace-provisioner', platformName)
  properties: {
    roleName: 'sparkplane workspace provisioner (${platformName})'
    description: 'Creates and deletes sparkplane workspaces\' managed resource groups and the VMs, scale sets and networks of their clusters.'
    type: 'CustomRole'
    assignableScopes: [
      subscription().id
    ]
    permissions: [
      {
        actions: [
          'Microsoft.Resources/subscriptions/read'
          'Microsoft.Resources/subscriptions/operationresults/read'
          'Microsoft.Resources/subscriptions/resourceGroups/read'
          'Microsoft.Resources/subscriptions/resourceGroups/write'
          'Microsoft.Resources/subscriptions/resourceGroups/delete'
          'Microsoft.Resources/subscriptions/resourceGroups/resources/read'
          'Microsoft.Resources/subscriptions/resources/read'
          'Microsoft.Resources/deployments/*'
          'Microsoft.Resources/tags/*'
          'Microsoft.Authorization/roleAssignments/read'
          'Microsoft.Network/virtualNetworks/*'
          'Microsoft.Network/networkSecurityGroups/*'
          'Microsoft.Network/natGateways/*'
          'Microsoft.Network/publicIPAddresses/*'
          'Microsoft.Network/networkInterfaces/*'
          'Microsoft.Network/locations/*/read'
          'Microsoft.Compute/virtualMachines/*'
          'Microsoft.Compute/virtualMachineScaleSets/*'
          'Microsoft.Compute/disks/*'
          'Microsoft.Compute/locations/*/read'
          'Microsoft.Storage/storageAccounts/*'
          'Microsoft.Storage/locations/*/read'
          'Microsoft.ManagedIdentity/userAssignedIdentities/read'
          'Microsoft.ManagedIdentity/userAssignedIdentities/write'
          'Microsoft.ManagedIdentity/userAssignedIdentities/delete'
          'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action'
        ]
        notActions: [
          'Microsoft.Storage/storageAccounts/listKeys/action'
          'Microsoft.Storage/storageAccounts/regeneratekey/action'
          'Microsoft.Storage/storageAccounts/ListAccountSas/action'
          'Microsoft.Storage/storageAccounts/listServiceSas/action'
        ]
        dataActions: []
        notDataActions: []
      }
    ]
  }
}

resource provisionerAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, provisionerRole.id)
  properties: {
    roleDefinitionId: provisionerRole.id
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'sparkplane control plane: provisions workspaces and clusters.'
  }
}

resource nodeStorageDelegation 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, rbacAdministrator)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', rbacAdministrator)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'sparkplane control plane: grants each workspace\'s node identity Storage Blob Data Contributor on the workspace storage account, and nothing else (condition).'
    condition: delegationCondition
    conditionVersion: '2.0'
  }
}

output provisionerRoleId string = provisionerRole.id
